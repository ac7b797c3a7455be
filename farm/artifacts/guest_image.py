"""Build the guest initramfs: /init (the agent), /bin/zapmigrate and busybox.

Workers call :func:`build_initramfs` before booting a guest. The image name
carries a digest of everything that goes into it (sources, compiler, C
library, busybox, this builder), so an unchanged checkout reuses the cached
image without compiling, and a changed one can never boot a stale image.
The cpio is written here rather than by ``cpio -o``: sorted entries, fixed
owners and mtimes and a gzip header without timestamp make the bytes
reproducible, and ``/dev/console`` can be a device node without root.

QEMU under libvirt runs as ``libvirt-qemu`` and must read the image (an image
under /root fails with "Permission denied"), so images are made world-readable;
whether the folders above ``cache_dir`` let other users through is ``workers.vm.qemu_readable``'s
business (it copies the image somewhere shared when they do not).

The image is the same for every kernel: a kernel's own modules (zram, for swap)
go in an archive appended per kernel (``farm.artifacts.modules.with_modules``).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

BUILDER_VERSION = 3  # bump when the image layout below changes
GUEST_DIR = Path(__file__).resolve().parents[2] / "guest"
SOURCES = ("agent.c", "zapmigrate.c")
CC = "gcc"
CFLAGS = ("-static", "-O2", "-Wall", "-Wextra", "-Werror", "-pthread", "-s")
BUSYBOX = Path("/bin/busybox")
APPLETS = ("cat", "dmesg", "ls", "mount", "poweroff", "sh")

Progress = Callable[[str], None]


class GuestImageError(RuntimeError):
    """The image cannot be built; the message says what to install or fix."""


@dataclass(frozen=True)
class CpioEntry:
    """One member of a newc archive."""

    name: str
    mode: int  # file type and permission bits, as st_mode
    data: bytes = b""  # file contents, or the target of a symlink
    rdev: tuple[int, int] = (0, 0)  # (major, minor) of a device node


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _run(args: list[str]) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise GuestImageError(
            f"{args[0]} not found: install it with `apt-get install gcc libc6-dev`"
        ) from exc
    if done.returncode != 0:
        raise GuestImageError(f"`{' '.join(args)}` failed:\n{done.stderr.strip()}")
    return done.stdout


def _is_static_elf(path: Path) -> bool:
    """True for an ELF executable without a PT_INTERP header (no dynamic loader needed)."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF":
        return False
    little = data[5] == 1
    order = "little" if little else "big"

    def num(off: int, size: int) -> int:
        return int.from_bytes(data[off : off + size], order)

    if data[4] == 2:  # 64-bit
        phoff, phentsize, phnum = num(32, 8), num(54, 2), num(56, 2)
    else:
        phoff, phentsize, phnum = num(28, 4), num(42, 2), num(44, 2)
    return all(num(phoff + i * phentsize, 4) != 3 for i in range(phnum))  # 3 = PT_INTERP


def _require_cc() -> None:
    if shutil.which(CC) is None:
        raise GuestImageError(f"{CC} not found: install it with `apt-get install gcc libc6-dev`")


def _toolchain() -> dict[str, str]:
    """What of the build host ends up in the binaries: compiler and static libc."""
    _require_cc()
    libc = Path(_run([CC, "-print-file-name=libc.a"]).strip())
    if not libc.is_absolute() or not libc.is_file():
        raise GuestImageError(
            "static C library libc.a not found: install it with `apt-get install libc6-dev`"
        )
    return {"cc": _run([CC, "--version"]).splitlines()[0], "libc.a": _sha256_file(libc)}


def _busybox() -> Path:
    if not BUSYBOX.is_file():
        raise GuestImageError(
            f"{BUSYBOX} not found: install it with `apt-get install busybox-static`"
        )
    if not _is_static_elf(BUSYBOX):
        raise GuestImageError(
            f"{BUSYBOX} is dynamically linked and cannot run in the initramfs: "
            "install `busybox-static` instead of `busybox`"
        )
    return BUSYBOX


def _source(name: str) -> Path:
    path = GUEST_DIR / name
    if not path.is_file():
        raise GuestImageError(f"guest source {path} is missing (run from a zapfarm checkout)")
    return path


def guest_sources_digest() -> str:
    """sha256 over the guest's C sources: names the guest programs' version in results."""
    digest = hashlib.sha256()
    for name in SOURCES:
        digest.update(f"{name}\0".encode())
        digest.update(_source(name).read_bytes())
    return digest.hexdigest()


def image_digest() -> str:
    """sha256 over every input of the image; its prefix is in the image's file name."""
    lines = [
        f"builder {BUILDER_VERSION}",
        f"cflags {' '.join(CFLAGS)}",
        f"applets {' '.join(APPLETS)}",
        f"sources {guest_sources_digest()}",
        f"busybox {_sha256_file(_busybox())}",
        *(f"{key} {value}" for key, value in sorted(_toolchain().items())),
    ]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def compile_static(source: Path, output: Path) -> None:
    """Compile one guest program exactly as the image does (static, -Werror)."""
    _require_cc()
    _run([CC, *CFLAGS, "-o", str(output), str(source)])


def write_newc(entries: Iterable[CpioEntry]) -> bytes:
    """A newc ("070701") cpio archive, as the kernel's initramfs unpacker reads it."""
    out = bytearray()

    def pad() -> None:
        out.extend(b"\0" * (-len(out) % 4))

    for ino, entry in enumerate([*entries, CpioEntry("TRAILER!!!", 0)], start=1):
        name = entry.name.encode() + b"\0"
        is_trailer = entry.name == "TRAILER!!!"
        fields = (
            0 if is_trailer else ino,
            entry.mode,
            0,  # uid
            0,  # gid
            2 if stat.S_ISDIR(entry.mode) else 1,
            0,  # mtime
            len(entry.data),
            0,  # devmajor
            0,  # devminor
            entry.rdev[0],
            entry.rdev[1],
            len(name),
            0,  # check
        )
        out.extend(b"070701" + b"".join(b"%08x" % f for f in fields) + name)
        pad()
        out.extend(entry.data)
        pad()
    return bytes(out)


def read_newc(data: bytes) -> list[CpioEntry]:
    """Parse a newc archive (for tests and debugging); stops at the trailer."""
    entries: list[CpioEntry] = []
    pos = 0
    while True:
        if data[pos : pos + 6] != b"070701":
            raise ValueError(f"not a newc header at offset {pos}")
        f = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, rdev, namesize = f[1], f[6], (f[9], f[10]), f[11]
        name_start = pos + 110
        name = data[name_start : name_start + namesize - 1].decode()
        pos = name_start + namesize
        pos += -pos % 4
        if name == "TRAILER!!!":
            return entries
        entries.append(CpioEntry(name, mode, data[pos : pos + size], rdev))
        pos += size
        pos += -pos % 4


def _entries(agent: Path, zapmigrate: Path, busybox: Path) -> list[CpioEntry]:
    def directory(name: str, perm: int = 0o755) -> CpioEntry:
        return CpioEntry(name, stat.S_IFDIR | perm)

    def program(name: str, path: Path) -> CpioEntry:
        return CpioEntry(name, stat.S_IFREG | 0o755, path.read_bytes())

    entries = [
        directory("bin"),
        program("bin/busybox", busybox),
        program("bin/zapmigrate", zapmigrate),
        directory("dev"),
        CpioEntry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
        program("init", agent),
        directory("proc"),
        directory("sys"),
        directory("tmp", 0o1777),
        *(CpioEntry(f"bin/{a}", stat.S_IFLNK | 0o777, b"busybox") for a in APPLETS),
    ]
    return sorted(entries, key=lambda e: e.name)


def build_initramfs(cache_dir: Path, *, progress: Progress | None = None) -> Path:
    """Return the gzip'd initramfs for the current sources, building it if needed.

    The image lands in ``cache_dir/"guest"/initramfs-<digest>.cpio.gz``, mode 0644
    in a 0755 folder. A second call with unchanged inputs compiles nothing.
    """
    say = progress or (lambda _msg: None)
    digest = image_digest()
    folder = Path(cache_dir) / "guest"
    folder.mkdir(parents=True, exist_ok=True)
    if stat.S_IMODE(folder.stat().st_mode) != 0o755:
        folder.chmod(0o755)
    image = folder / f"initramfs-{digest[:16]}.cpio.gz"
    if image.is_file():
        say(f"guest image cached: {image}")
        return image

    with tempfile.TemporaryDirectory(prefix=".build-", dir=folder) as tmp:
        build = Path(tmp)
        binaries = {}
        for name in SOURCES:
            say(f"compiling {name}")
            binaries[name] = build / name.removesuffix(".c")
            compile_static(_source(name), binaries[name])
        say("writing initramfs")
        archive = write_newc(_entries(binaries["agent.c"], binaries["zapmigrate.c"], _busybox()))
        partial = build / image.name
        partial.write_bytes(gzip.compress(archive, compresslevel=9, mtime=0))
        partial.chmod(0o644)
        os.replace(partial, image)  # atomic: a concurrent builder writes the same bytes
    say(f"guest image built: {image} ({image.stat().st_size} bytes)")
    return image


def with_program(cache_dir: Path, binary: Path, *, progress: Progress | None = None) -> Path:
    """The farm's initramfs with another trial program: ``binary`` as ``/bin/zapfarm-program``
    behind ``guest/program_wrapper.c`` as ``/bin/zapmigrate`` (its stderr joined to stdout).

    The agent runs ``/bin/zapmigrate``; a second gzip'd newc archive appended to
    the image holds the two files, and the kernel unpacks concatenated archives
    in order, the later file replacing the earlier one. Used to run a
    standalone reproducer or a reported program in a farm guest. Cached by the
    image, the wrapper and the program's sha256.
    """
    if not _is_static_elf(binary):
        raise GuestImageError(f"{binary} is not a static ELF executable: build it with -static")
    base = build_initramfs(cache_dir, progress=progress)
    data = binary.read_bytes()
    wrapper_source = _source("program_wrapper.c")
    digest = hashlib.sha256(data + wrapper_source.read_bytes()).hexdigest()
    image = base.with_name(base.name.replace(".cpio.gz", f"-prog-{digest[:16]}.cpio.gz"))
    if image.is_file():
        return image
    with tempfile.TemporaryDirectory(prefix=".prog-", dir=base.parent) as tmp:
        wrapper = Path(tmp) / "program_wrapper"
        compile_static(wrapper_source, wrapper)
        extra = write_newc(
            [
                CpioEntry("bin/zapfarm-program", stat.S_IFREG | 0o755, data),
                CpioEntry("bin/zapmigrate", stat.S_IFREG | 0o755, wrapper.read_bytes()),
            ]
        )
        partial = Path(tmp) / image.name
        partial.write_bytes(base.read_bytes() + gzip.compress(extra, compresslevel=6, mtime=0))
        partial.chmod(0o644)
        os.replace(partial, image)
    return image
