"""Guest kernels: the installed Debian kernel, Debian kernels fetched from the
mirror, custom bzImages, and registering them by name and sha256.

Trials name the kernel they booted, and a name stands for one image forever
(farm.store.db.ensure_kernel), so every image the farm boots is copied into
``cache_dir/kernels/<name>/`` (world-readable: QEMU runs as libvirt-qemu) and
recorded with its sha256.

Debian kernels of other releases than the host's (bullseye 5.10, trixie 6.12)
come from the mirror the host already uses, through a private apt set-up under
``cache_dir/apt/<suite>/`` (its own sources list, lists, cache and an empty
dpkg status), so the system's apt configuration is never touched.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from farm.artifacts.modules import MODULES_DIR, ModuleError, keep_modules

_VMLINUZ = re.compile(r"^vmlinuz-(?P<release>\d+\.\d+\.\d+.*)$")

# The Debian releases the farm can fetch kernels from, and the kernel series each ships.
SUITES: dict[str, str] = {"bullseye": "5.10", "bookworm": "6.1", "trixie": "6.12"}
GONE_SUITES = frozenset({"jessie", "stretch", "buster"})  # archived: not on the mirror any more
FLAVOURS = ("amd64", "cloud-amd64", "rt-amd64")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY_MIRROR = "http://deb.debian.org/debian-security"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
APT_TIMEOUT_S = 900

BZIMAGE_MAGIC_OFFSET = 0x202
BZIMAGE_MAGIC = b"HdrS"

Progress = Callable[[str], None]


class KernelNotFound(LookupError):
    """No usable kernel image; the message says how to get one."""


class KernelError(RuntimeError):
    """A kernel cannot be fetched, added or built; the message says what to fix."""


@dataclass(frozen=True)
class KernelImage:
    name: str
    release: str
    path: Path
    sha256: str
    source: str
    # what went into a farm build: source, patches, instrumentation (None: not built here)
    provenance: dict[str, object] | None = field(default=None, compare=False, hash=False)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _version_key(release: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", release))


def installed_kernel(boot: Path = Path("/boot")) -> KernelImage:
    """The newest Debian kernel image in /boot (package linux-image-amd64)."""
    found = sorted(
        (m["release"], p)
        for p in boot.glob("vmlinuz-*")
        if (m := _VMLINUZ.match(p.name)) and p.is_file()
    )
    if not found:
        raise KernelNotFound(
            f"no kernel image in {boot}: install one with `apt-get install linux-image-amd64`"
        )
    release, path = max(found, key=lambda item: _version_key(item[0]))
    return KernelImage(
        name=f"debian-{release}",
        release=release,
        path=path,
        sha256=sha256_of(path),
        source="debian:installed",
    )


# --- names and validation ------------------------------------------------------


def parse_distribution(spec: str) -> str:
    """``debian:<suite>`` -> suite; anything else is refused naming the valid ones."""
    valid = ", ".join(f"debian:{s}" for s in SUITES)
    vendor, _, suite = spec.strip().partition(":")
    if vendor != "debian" or not suite:
        raise KernelError(f"unknown distribution {spec!r}: use one of {valid}")
    if suite in GONE_SUITES:
        raise KernelError(
            f"debian:{suite} is archived and no longer on the Debian mirror: use one of {valid}"
        )
    if suite not in SUITES:
        raise KernelError(f"unknown Debian suite {suite!r}: use one of {valid}")
    return suite


def check_flavour(flavour: str) -> str:
    if flavour not in FLAVOURS:
        raise KernelError(f"unknown kernel flavour {flavour!r}: use one of {', '.join(FLAVOURS)}")
    return flavour


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


def check_name(name: str) -> str:
    """Kernel names become folder names and appear in results: keep them plain."""
    if not _NAME.match(name):
        raise KernelError(
            f"invalid kernel name {name!r}: use 1-128 letters, digits and . _ + - "
            "(starting with a letter or digit)"
        )
    return name


@dataclass(frozen=True)
class BzImageInfo:
    protocol: str  # boot protocol version, e.g. "2.15"
    release: str | None  # uname -r, from the header's kernel_version string


def inspect_bzimage(path: Path) -> BzImageInfo:
    """Check that ``path`` is an x86 bzImage (setup header "HdrS" at 0x202).

    Raises KernelError saying what is wrong; the release comes from the
    header's kernel_version string when the image has one.
    """
    try:
        with path.open("rb") as f:
            head = f.read(0x8000)
    except OSError as exc:
        raise KernelError(f"cannot read {path}: {exc.strerror}") from exc
    if head[BZIMAGE_MAGIC_OFFSET : BZIMAGE_MAGIC_OFFSET + 4] != BZIMAGE_MAGIC:
        what = "an ELF file (vmlinux?)" if head[:4] == b"\x7fELF" else "not a bzImage"
        raise KernelError(
            f"{path} is {what}: no 'HdrS' setup header at offset 0x202; pass the "
            "bzImage (arch/x86/boot/bzImage or /boot/vmlinuz-*)"
        )
    version = int.from_bytes(head[0x206:0x208], "little")
    if version < 0x0200:
        raise KernelError(f"{path}: boot protocol {version >> 8}.{version & 0xFF} is too old")
    release = None
    pointer = int.from_bytes(head[0x20E:0x210], "little")
    if pointer:
        start = pointer + 0x200
        text = head[start : start + 256].split(b"\0", 1)[0].decode("ascii", errors="replace")
        if text.split():
            release = text.split()[0]
    return BzImageInfo(protocol=f"{version >> 8}.{version & 0xFF}", release=release)


# --- the cache -----------------------------------------------------------------


def kernels_dir(cache_dir: Path) -> Path:
    return Path(cache_dir) / "kernels"


def _mkdir_shared(path: Path) -> Path:
    """mkdir -p, with every folder it creates (and ``path``) at 0755 whatever the umask."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    for folder in (*missing, path):
        folder.chmod(0o755)
    return path


def place_image(source: Path, folder: Path, filename: str) -> Path:
    """Copy an image into the cache, world-readable, atomically."""
    _mkdir_shared(folder)
    target = folder / filename
    tmp = folder / f".{filename}.tmp"
    shutil.copyfile(source, tmp)
    tmp.chmod(0o644)
    os.replace(tmp, target)
    return target


def readable_by_qemu(path: Path) -> bool:
    """Whether libvirt-qemu can read ``path`` (workers.vm copies it when not)."""
    if not path.stat().st_mode & 0o004:
        return False
    return all(p.stat().st_mode & 0o001 for p in path.resolve().parents)


def write_manifest(folder: Path, data: dict[str, object]) -> None:
    tmp = folder / ".kernel.json.tmp"
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.chmod(0o644)
    os.replace(tmp, folder / "kernel.json")


def read_manifest(folder: Path) -> dict[str, object] | None:
    try:
        data = json.loads((folder / "kernel.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def cached_kernels(cache_dir: Path) -> list[KernelImage]:
    """Every kernel fetched, added or built into ``cache_dir/kernels`` (no database).

    Each non-dot folder there is one kernel, described by its kernel.json.
    """
    found = []
    folder = kernels_dir(cache_dir)
    for sub in sorted(folder.iterdir()) if folder.is_dir() else []:
        data = read_manifest(sub) if sub.is_dir() and not sub.name.startswith(".") else None
        if data and Path(str(data.get("path", ""))).is_file():
            found.append(
                KernelImage(
                    name=sub.name,
                    release=str(data.get("release", "")),
                    path=Path(str(data["path"])),
                    sha256=str(data.get("sha256", "")),
                    source=str(data.get("source", "")),
                )
            )
    return found


def resolve_kernel(
    cache_dir: Path, name: str, sha256: str | None, boot: Path = Path("/boot")
) -> Path:
    """The image this host has under ``name``, checked against the ``sha256`` a trial names.

    A worker calls this for every trial message: the name is looked up in this
    host's own cache (``cache_dir/kernels/<name>/``) and among the installed
    Debian kernels (``debian-<release>`` in /boot), never taken as a path. Raises
    KernelNotFound or KernelError (an infrastructure error) naming the fix.
    """
    try:
        check_name(name)
    except KernelError as exc:
        raise KernelNotFound(str(exc)) from exc
    if sha256 is None:
        raise KernelError(
            f"the trial names kernel {name!r} without a sha256 (the control plane never "
            "learnt it): register it there with `farm kernels fetch/add`"
        )
    folder = kernels_dir(cache_dir) / name
    found: Path | None = None
    manifest = read_manifest(folder)
    if manifest is not None:
        # only the file name counts: the folder may have been copied from a host that keeps
        # its cache elsewhere, and nothing outside the kernel's own folder is ever read
        listed = Path(str(manifest.get("path", ""))).name
        if listed not in ("", ".", "..") and (folder / listed).is_file():
            found = folder / listed
    if found is None and name.startswith("debian-"):
        installed = boot / f"vmlinuz-{name.removeprefix('debian-')}"
        if _VMLINUZ.match(installed.name) and installed.is_file():
            found = installed
    if found is None:
        raise KernelNotFound(
            f"this worker has no kernel {name!r} (looked in {folder} and {boot}): fetch or add "
            "it on this host (`farm kernels fetch` / `farm kernels add`), or stop routing its "
            "queue here"
        )
    actual = _cached_sha256(found)
    if actual != sha256:
        raise KernelError(
            f"kernel {name!r} on this worker ({found}) has sha256 {actual[:16]}..., the trial "
            f"names {sha256[:16]}...: the name stands for another image here; fetch or add "
            "the same image on every host"
        )
    return found


_SHA_CACHE: dict[tuple[str, int, int, int], str] = {}


def _cached_sha256(path: Path) -> str:
    """sha256 of an image, recomputed only when its inode, size or mtime change."""
    st = path.stat()
    key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = sha256_of(path)
    return _SHA_CACHE[key]


# --- custom images ---------------------------------------------------------------


def add_custom(cache_dir: Path, path: Path, name: str, release: str | None = None) -> KernelImage:
    """Copy a custom bzImage into ``cache_dir/kernels/<name>/bzImage`` and describe it."""
    check_name(name)
    path = Path(path)
    if not path.is_file():
        raise KernelError(f"{path} does not exist or is not a file")
    info = inspect_bzimage(path)
    release = release or info.release
    if not release:
        raise KernelError(f"{path} carries no kernel version string: pass --release")
    sha = sha256_of(path)
    folder = kernels_dir(cache_dir) / name
    old = read_manifest(folder)
    if old is not None and old.get("sha256") != sha:
        raise KernelError(
            f"{folder} already holds a different image called {name!r} "
            f"(sha256 {str(old.get('sha256'))[:16]}...): choose another --name"
        )
    target = folder / "bzImage"
    if not (target.is_file() and sha256_of(target) == sha):
        target = place_image(path, folder, "bzImage")
    image = KernelImage(name=name, release=release, path=target, sha256=sha, source="custom")
    write_manifest(folder, {**_image_json(image), "original": str(path.resolve())})
    return image


def _image_json(image: KernelImage) -> dict[str, object]:
    return {k: str(v) for k, v in asdict(image).items()}


# --- a private apt for other Debian suites -------------------------------------


@dataclass(frozen=True)
class Mirrors:
    debian: str
    security: str


def _uris_from_sources(apt_etc: Path) -> list[tuple[str, list[str]]]:
    """(uri, suites) of every deb source the system's apt reads."""
    found: list[tuple[str, list[str]]] = []
    one_line = apt_etc / "sources.list"
    files = [one_line] if one_line.is_file() else []
    parts = apt_etc / "sources.list.d"
    if parts.is_dir():
        files += sorted(p for p in parts.iterdir() if p.suffix in (".list", ".sources"))
    for file in files:
        try:
            text = file.read_text(errors="replace")
        except OSError:
            continue
        if file.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line or line[:1].isspace():
                        continue
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
                if "deb" not in fields.get("types", "").split():
                    continue
                if fields.get("enabled", "yes").lower() == "no":
                    continue
                suites = fields.get("suites", "").split()
                found += [(uri, suites) for uri in fields.get("uris", "").split()]
        else:
            for line in text.splitlines():
                line = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
                if len(line) >= 3 and line[0] == "deb":
                    found.append((line[1], [line[2]]))
    return found


def find_mirrors(apt_etc: Path = Path("/etc/apt")) -> Mirrors:
    """The Debian mirror (and security mirror) this host's apt already uses."""
    known = set(SUITES) | GONE_SUITES | {"sid", "unstable", "testing", "stable", "oldstable"}
    debian = security = None
    for uri, suites in _uris_from_sources(apt_etc):
        uri = uri.rstrip("/")
        for suite in suites:
            base, _, pocket = suite.partition("-")
            if base not in known:
                continue
            if pocket == "security" or suite.endswith("/updates"):
                security = security or uri
            elif not pocket or pocket in ("updates", "backports"):
                debian = debian or uri
    debian = debian or DEFAULT_MIRROR
    if security is None:
        security = (
            debian.removesuffix("/debian") + "/debian-security"
            if debian.endswith("/debian")
            else DEFAULT_SECURITY_MIRROR
        )
    return Mirrors(debian=debian, security=security)


@dataclass(frozen=True)
class AptPackage:
    name: str
    version: str
    size: int  # bytes of the .deb
    filename: str  # path of the .deb on the mirror


class PrivateApt:
    """apt-get / apt-cache on one Debian suite with everything under ``root``.

    Nothing of the system's apt set-up is read or written except the host's
    apt binaries and the Debian archive keyring.
    """

    def __init__(self, root: Path, suite: str, mirrors: Mirrors) -> None:
        self.root = Path(root)
        self.suite = suite
        self.mirrors = mirrors

    @property
    def sources_list(self) -> Path:
        return self.root / "sources.list"

    def sources(self) -> str:
        signed = f" [signed-by={KEYRING}]" if KEYRING.is_file() else ""
        lines = [
            f"deb{signed} {self.mirrors.debian} {self.suite} main",
            f"deb{signed} {self.mirrors.debian} {self.suite}-updates main",
            f"deb{signed} {self.mirrors.security} {self.suite}-security main",
        ]
        return "\n".join(lines) + "\n"

    def options(self) -> list[str]:
        r = self.root
        opts = {
            "Dir::Etc::SourceList": r / "sources.list",
            "Dir::Etc::SourceParts": r / "sources.list.d",
            "Dir::Etc::Preferences": r / "preferences",
            "Dir::Etc::PreferencesParts": r / "preferences.d",
            "Dir::State::Lists": r / "lists",
            "Dir::State::status": r / "status",
            "Dir::Cache": r / "cache",
            "APT::Architecture": "amd64",
            "APT::Architectures": "amd64",
            "Acquire::Languages": "none",
            "Acquire::Retries": "2",
        }
        if os.geteuid() == 0:  # downloads land in our folders, which _apt cannot write
            opts["APT::Sandbox::User"] = "root"
        return [arg for key, value in opts.items() for arg in ("-o", f"{key}={value}")]

    def prepare(self) -> None:
        for sub in ("lists/partial", "cache/archives/partial", "sources.list.d", "preferences.d"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "status").touch()
        if not self.sources_list.is_file() or self.sources_list.read_text() != self.sources():
            self.sources_list.write_text(self.sources())

    def has_lists(self) -> bool:
        lists = self.root / "lists"
        return lists.is_dir() and any(lists.glob("*_Packages*"))

    def _run(self, tool: str, args: list[str], cwd: Path | None = None) -> str:
        cmd = [tool, "-q", *self.options(), *args]
        shown = " ".join(cmd)
        try:
            done = subprocess.run(
                cmd,
                cwd=cwd,
                capture_output=True,
                text=True,
                check=False,
                timeout=APT_TIMEOUT_S,
                env={**os.environ, "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"},
            )
        except FileNotFoundError as exc:
            raise KernelError(f"{tool} not found: this needs a Debian host with apt") from exc
        except subprocess.TimeoutExpired as exc:
            raise KernelError(
                f"`{shown}` did not finish within {APT_TIMEOUT_S} s: the mirror "
                f"{self.mirrors.debian} is too slow or unreachable"
            ) from exc
        errors = _apt_errors(done.stdout) + _apt_errors(done.stderr)
        if done.returncode != 0 or (args[:1] == ["update"] and errors):
            detail = "\n".join(errors[:8] or done.stderr.strip().splitlines()[-5:])
            raise KernelError(
                f"{tool} {args[0]} failed (exit {done.returncode}) for debian:{self.suite} "
                f"from the mirror {self.mirrors.debian} (security: {self.mirrors.security}):\n"
                f"{detail}\ncommand: {' '.join(cmd)}\n"
                "check the network and the mirror (taken from /etc/apt/sources.list(.d))"
            )
        return done.stdout

    def update(self) -> None:
        self.prepare()
        self._run("apt-get", ["update"])

    def package(self, name: str) -> AptPackage | None:
        """The candidate (newest) version of ``name`` in this suite, None if absent."""
        try:
            policy = self._run("apt-cache", ["policy", name])
        except KernelError:
            return None
        m = re.search(r"^\s*Candidate:\s*(\S+)", policy, re.M)
        if not m or m[1] == "(none)":
            return None
        version = m[1]
        show = self._run("apt-cache", ["show", f"{name}={version}"])
        stanza = show.split("\n\n", 1)[0]
        fields = dict(
            (k.strip(), v.strip())
            for k, _, v in (ln.partition(":") for ln in stanza.splitlines())
            if k and not k[0].isspace()
        )
        return AptPackage(
            name=name,
            version=version,
            size=int(fields.get("Size", "0") or 0),
            filename=fields.get("Filename", ""),
        )

    def depends(self, name: str, version: str) -> list[str]:
        show = self._run("apt-cache", ["show", f"{name}={version}"])
        stanza = show.split("\n\n", 1)[0]
        m = re.search(r"^Depends:\s*(.+)$", stanza, re.M)
        if not m:
            return []
        return [alt.split()[0] for dep in m[1].split(",") for alt in dep.split("|")[:1]]

    def download(self, package: AptPackage, dest: Path) -> Path:
        """``apt-get download`` one package into ``dest``; returns the .deb."""
        dest.mkdir(parents=True, exist_ok=True)
        before = set(dest.glob("*.deb"))
        self._run("apt-get", ["download", f"{package.name}={package.version}"], cwd=dest)
        new = sorted(set(dest.glob(f"{package.name}_*.deb")) - before) or sorted(
            dest.glob(f"{package.name}_*.deb")
        )
        if not new:
            raise KernelError(f"apt-get download {package.name} produced no .deb in {dest}")
        return new[-1]


def _apt_errors(text: str) -> list[str]:
    """apt's error lines ("Err:", "E:", "W: Failed") and the reason lines under "Err:"."""
    out: list[str] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(("E:", "Err:", "W: Failed")):
            out.append(line)
            if line.startswith("Err:") and i + 1 < len(lines) and lines[i + 1][:1].isspace():
                out.append(lines[i + 1])
    return out


def private_apt(
    cache_dir: Path, suite: str, say: Callable[[str], object], apt_etc: Path = Path("/etc/apt")
) -> PrivateApt:
    """The suite's private apt with fresh lists (or earlier lists when the mirror fails)."""
    mirrors = find_mirrors(apt_etc)
    apt = PrivateApt(Path(cache_dir) / "apt" / suite, suite, mirrors)
    say(f"updating package lists of debian:{suite} from {mirrors.debian}")
    try:
        apt.update()
    except KernelError as exc:
        if not apt.has_lists():
            raise
        say(f"[warning] {exc}\nusing the package lists fetched earlier")
    return apt


def dpkg_extract(deb: Path, dest: Path) -> None:
    done = subprocess.run(
        ["dpkg-deb", "-x", str(deb), str(dest)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise KernelError(f"`dpkg-deb -x {deb} {dest}` failed: {done.stderr.strip()}")


# --- fetching Debian kernels ------------------------------------------------------


@dataclass(frozen=True)
class FetchResult:
    image: KernelImage
    package: str
    version: str
    downloaded: bool
    download_bytes: int
    seconds: float
    mirror: str


def image_package_for(apt: PrivateApt, flavour: str) -> AptPackage:
    """The versioned linux-image-<abi>-<flavour> the metapackage currently depends on."""
    meta = f"linux-image-{flavour}"
    candidate = apt.package(meta)
    if candidate is None:
        raise KernelError(
            f"debian:{apt.suite} has no package {meta} on {apt.mirrors.debian}: "
            f"valid flavours are {', '.join(FLAVOURS)}"
        )
    pattern = re.compile(rf"^linux-image-\d+\.\d+\.\d+\S*-{re.escape(flavour)}(-unsigned)?$")
    deps = [d for d in apt.depends(meta, candidate.version) if pattern.match(d)]
    for name in deps:
        pkg = apt.package(name)
        if pkg is not None:
            return pkg
    raise KernelError(
        f"{meta} {candidate.version} in debian:{apt.suite} depends on no installable "
        f"linux-image-<version>-{flavour} package (depends: {', '.join(deps) or 'none'})"
    )


def release_of_package(name: str) -> str:
    """linux-image-5.10.0-32-amd64(-unsigned) -> 5.10.0-32-amd64 (uname -r)."""
    return name.removeprefix("linux-image-").removesuffix("-unsigned")


def fetch_debian(
    cache_dir: Path,
    suite: str,
    flavour: str = "amd64",
    *,
    name: str | None = None,
    progress: Progress | None = None,
    apt_etc: Path = Path("/etc/apt"),
) -> FetchResult:
    """Download the newest Debian kernel of ``suite``/``flavour`` into the cache.

    Lists are refreshed every time (cheap when unchanged); the image package is
    downloaded only when that version is not cached yet (or was cached before
    modules were kept). Of the package, boot/ (vmlinuz, config, System.map) and
    the swap modules (zram and its dependencies, decompressed, under
    ``modules/<release>/``: farm.artifacts.modules) are kept.
    """
    say = progress or (lambda _msg: None)
    suite = parse_distribution(suite if ":" in suite else f"debian:{suite}")
    check_flavour(flavour)
    started = time.monotonic()
    apt = private_apt(cache_dir, suite, say, apt_etc)
    package = image_package_for(apt, flavour)
    release = release_of_package(package.name)
    name = check_name(name or f"debian-{suite}-{release}")
    folder = kernels_dir(cache_dir) / name
    vmlinuz = folder / "vmlinuz"
    manifest = read_manifest(folder)
    if (
        manifest is not None
        and manifest.get("package") == package.name
        and manifest.get("version") == package.version
        and "modules" in manifest  # fetched before modules were kept: fetch again
        and vmlinuz.is_file()
        and sha256_of(vmlinuz) == manifest.get("sha256")
    ):
        say(f"{package.name} {package.version} is already in {folder}: nothing to download")
        image = KernelImage(name, release, vmlinuz, str(manifest["sha256"]), f"debian:{suite}")
        return FetchResult(
            image, package.name, package.version, False, 0, time.monotonic() - started, ""
        )
    if manifest is not None and manifest.get("version") not in (None, package.version):
        raise KernelError(
            f"{folder} holds {manifest.get('package')} {manifest.get('version')}, and "
            f"debian:{suite} now has {package.version} under the same name {name!r}: "
            "fetch it under another --name (a name stands for one image forever)"
        )
    size_mb = package.size / 1e6
    say(
        f"downloading {package.name} {package.version} ({size_mb:.1f} MB) from "
        f"{apt.mirrors.debian} / {apt.mirrors.security}"
    )
    kernels_dir(cache_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=kernels_dir(cache_dir)) as tmp:
        work = Path(tmp)
        deb = apt.download(package, work / "deb")
        say(f"unpacking {deb.name}")
        tree = work / "tree"
        dpkg_extract(deb, tree)
        boot = tree / "boot"
        found = boot / f"vmlinuz-{release}"
        if not found.is_file():
            candidates = sorted(boot.glob("vmlinuz-*"))
            if len(candidates) != 1:
                raise KernelError(f"{deb.name} holds no boot/vmlinuz-{release}")
            found = candidates[0]
        info = inspect_bzimage(found)
        _mkdir_shared(folder)
        place_image(found, folder, "vmlinuz")
        for extra in ("config", "System.map"):
            src = boot / f"{extra}-{release}"
            if src.is_file():
                place_image(src, folder, extra)
        say(f"keeping the swap modules of {release} (depmod -b, decompress)")
        try:
            kept = keep_modules(tree, release, folder / MODULES_DIR)
        except ModuleError as exc:
            raise KernelError(f"{deb.name}: {exc}") from exc
        sha = sha256_of(vmlinuz)
        image = KernelImage(name, release, vmlinuz, sha, f"debian:{suite}")
        write_manifest(
            folder,
            {
                **_image_json(image),
                "package": package.name,
                "version": package.version,
                "flavour": flavour,
                "suite": suite,
                "mirror": apt.mirrors.debian,
                "deb_size": deb.stat().st_size,
                "deb_sha256": sha256_of(deb),
                "boot_protocol": info.protocol,
                "modules": kept,  # load order; [] when zram is built in or absent
            },
        )
        downloaded = deb.stat().st_size
    return FetchResult(
        image,
        package.name,
        package.version,
        True,
        downloaded,
        time.monotonic() - started,
        apt.mirrors.debian,
    )


def provenance_summary(prov: dict[str, object] | None) -> str:
    """One line for people: the source, the instrumentation, each patch with a short sha256."""
    if not prov:
        return ""
    parts = [str(prov.get("source", "?"))]
    if prov.get("instrumentation"):
        parts.append(f"instrument {prov['instrumentation']}")
    patches = prov.get("patches")
    if isinstance(patches, list):
        for p in patches:
            if isinstance(p, dict):
                origin = "" if p.get("origin") == "farm" else " (user)"
                name = str(p.get("name", "?")).rsplit("/", 1)[-1]
                parts.append(f"{name} {str(p.get('sha256', ''))[:12]}{origin}")
    if prov.get("config_base") not in (None, "tinyconfig"):
        parts.append(f"config {prov['config_base']}")
    return "; ".join(parts)


# --- the database ------------------------------------------------------------------
