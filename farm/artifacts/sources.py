"""Kernel sources: Debian's linux-source tarballs, found, fetched and unpacked.

A build starts from ``linux-source-<series>``: the installed package's tarball
under /usr/src when the host has it, else one fetched from the series' Debian
suite with the farm's private apt and kept in the cache. Checking that the
farm's patches still apply needs only a few files of it: ``source_excerpt``
unpacks those (and every Kconfig file) once.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from farm.artifacts.kernels import (
    SUITES,
    KernelError,
    dpkg_extract,
    kernels_dir,
    private_apt,
)

# kernel series -> the Debian suite whose linux-source-<series> package has it
SERIES: dict[str, str] = {v: k for k, v in SUITES.items()}
USR_SRC = Path("/usr/src")
# the files guest/kernel/patches/*/ touch: what checking a patch needs unpacked
PATCHED_FILES = ("mm/memory.c", "mm/vmstat.c", "include/linux/vm_event_item.h")

Progress = Callable[[str], None]


def check_series(series: str) -> str:
    """The Debian suite of a kernel series; a KernelError naming the valid ones if unknown."""
    if series not in SERIES:
        raise KernelError(
            f"unknown kernel series {series!r}: use one of {', '.join(SERIES)} "
            "(Debian's linux-source-<series> packages)"
        )
    return SERIES[series]


@dataclass(frozen=True)
class SourceTarball:
    series: str
    package_version: str
    path: Path
    origin: str  # "installed" (/usr/src, a system package), "cache" or "tree" (a developer's)


def sources_dir(cache_dir: Path) -> Path:
    return kernels_dir(cache_dir) / ".sources"


def _installed_version(package: str) -> str | None:
    try:
        done = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}\t${Version}", package],
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError:
        return None
    status, _, version = done.stdout.partition("\t")
    return version if done.returncode == 0 and status.endswith(" installed") else None


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", version))


def find_source(cache_dir: Path, series: str, usr_src: Path = USR_SRC) -> SourceTarball | None:
    """A linux-source-<series> tarball already on this host, without any network."""
    installed = usr_src / f"linux-source-{series}.tar.xz"
    version = _installed_version(f"linux-source-{series}") if installed.is_file() else None
    if version:
        return SourceTarball(series, version, installed, "installed")
    cached = [
        p for p in sources_dir(cache_dir).glob(f"*/linux-source-{series}.tar.xz") if p.is_file()
    ]
    if not cached:
        return None
    newest = max(cached, key=lambda p: _version_key(p.parent.name))
    return SourceTarball(series, newest.parent.name, newest, "cache")


def host_suite(os_release: Path = Path("/etc/os-release")) -> str | None:
    try:
        text = os_release.read_text()
    except OSError:
        return None
    m = re.search(r"^VERSION_CODENAME=\"?([a-z]+)", text, re.M)
    return m[1] if m else None


def get_source(
    cache_dir: Path, series: str, *, refresh: bool = False, progress: Progress | None = None
) -> SourceTarball:
    """The linux-source-<series> tarball: on disk already, or fetched now.

    Without ``refresh`` an existing tarball is used as is (no network). The
    host's own suite installs the package with apt-get (it lands in /usr/src);
    other suites are downloaded with the private apt of farm.artifacts.kernels and only
    the tarball is kept, in ``cache_dir/kernels/sources/<version>/``.
    """
    say = progress or (lambda _msg: None)
    suite = check_series(series)
    if not refresh and (found := find_source(cache_dir, series)) is not None:
        return found
    package = f"linux-source-{series}"
    if not refresh and host_suite() == suite and os.geteuid() == 0:
        say(f"installing {package} with apt-get (the host is debian:{suite})")
        _apt_install(package)
        if (found := find_source(cache_dir, series)) is not None and found.origin == "installed":
            return found
    apt = private_apt(cache_dir, suite, say)
    pkg = apt.package(package)
    if pkg is None:
        raise KernelError(f"debian:{suite} has no package {package} on {apt.mirrors.debian}")
    folder = sources_dir(cache_dir) / pkg.version
    tarball = folder / f"linux-source-{series}.tar.xz"
    if tarball.is_file():
        return SourceTarball(series, pkg.version, tarball, "cache")
    say(f"downloading {package} {pkg.version} ({pkg.size / 1e6:.0f} MB) from {apt.mirrors.debian}")
    sources_dir(cache_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".src-", dir=sources_dir(cache_dir)) as tmp:
        deb = apt.download(pkg, Path(tmp) / "deb")
        say(f"unpacking {deb.name}")
        tree = Path(tmp) / "tree"
        dpkg_extract(deb, tree)
        inner = tree / "usr" / "src" / f"linux-source-{series}.tar.xz"
        if not inner.is_file():
            raise KernelError(f"{deb.name} holds no usr/src/linux-source-{series}.tar.xz")
        folder.mkdir(parents=True, exist_ok=True)
        os.replace(inner, tarball)
    return SourceTarball(series, pkg.version, tarball, "cache")


def _apt_install(package: str) -> None:
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", package]
    done = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"},
    )
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise KernelError(
            f"`{' '.join(cmd)}` failed (exit {done.returncode}):\n{tail}\n"
            "run `apt-get update` first if the package lists are old"
        )


def extract(tarball: Path, dest: Path, members: list[str] | None = None) -> Path:
    """Unpack the tarball (or only ``members``, tar wildcards) into ``dest``.

    Returns the tree's top folder (``dest/linux-source-<series>``).
    """
    dest.mkdir(parents=True, exist_ok=True)
    xz = "xz -T0" if shutil.which("xz") else None
    cmd = ["tar", "-x", "-f", str(tarball), "-C", str(dest)]
    cmd[1:1] = [f"--use-compress-program={xz}"] if xz else ["-J"]
    if members:
        cmd += ["--wildcards", *members]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise KernelError(f"`{' '.join(cmd)}` failed: {done.stderr.strip()[-500:]}")
    tops = [p for p in dest.iterdir() if p.is_dir() and p.name.startswith("linux-source-")]
    if len(tops) != 1:
        raise KernelError(f"{tarball} did not unpack to one linux-source-* folder in {dest}")
    return tops[0]


def source_excerpt(cache_dir: Path, source: SourceTarball) -> Path:
    """PATCHED_FILES and every Kconfig file of a tarball, unpacked once and kept.

    Checking patches and fragment symbols needs only these (~1,700 files); a
    full unpack takes much longer. Keyed by the tarball's version, size and
    mtime, and by the list of files (a longer list unpacks anew).
    """
    st = source.path.stat()
    files = hashlib.sha256("\n".join(PATCHED_FILES).encode()).hexdigest()[:8]
    key = f"{source.series}-{source.package_version}-{st.st_size}-{int(st.st_mtime)}-{files}"
    folder = kernels_dir(cache_dir) / ".excerpts" / key
    done_mark = folder / ".complete"
    if not done_mark.is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".excerpt-", dir=folder.parent))
        try:
            top = f"linux-source-{source.series}"
            extract(source.path, tmp, [*(f"{top}/{f}" for f in PATCHED_FILES), "*Kconfig*"])
            (tmp / ".complete").touch()
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return folder / f"linux-source-{source.series}"
