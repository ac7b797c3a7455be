"""farm/artifacts/guest_image.py: a real build of the initramfs, read back with Python.

The kernel unpacks the image, QEMU (as libvirt-qemu) reads it and workers
rebuild it before boots, so the tests check what each of them relies on:
newc entries and modes, static binaries, a cache hit that compiles nothing,
byte-for-byte reproducible output and modes readable by other users.
"""

from __future__ import annotations

import gzip
import stat
import subprocess
import time
from pathlib import Path

import pytest
from archives import gzip_members

from farm.artifacts import guest_image
from farm.artifacts.guest_image import CpioEntry, build_initramfs, read_newc, write_newc


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str]]:
    cache = tmp_path_factory.mktemp("cache")
    messages: list[str] = []
    return cache, build_initramfs(cache, progress=messages.append), messages


def entries_of(image: Path) -> dict[str, CpioEntry]:
    return {e.name: e for e in read_newc(gzip.decompress(image.read_bytes()))}


def test_image_contents(built: tuple[Path, Path, list[str]]) -> None:
    cache, image, messages = built
    assert image.parent == cache / "guest"
    assert image.name.startswith("initramfs-") and image.name.endswith(".cpio.gz")
    assert any("compiling" in m for m in messages)
    entries = entries_of(image)
    applets = {f"bin/{a}" for a in ("sh", "mount", "cat", "ls", "dmesg", "poweroff")}
    assert set(entries) == {
        "init",
        "bin",
        "bin/busybox",
        "bin/zapmigrate",
        "dev",
        "dev/console",
        "proc",
        "sys",
        "tmp",
        *applets,
    }  # fmt: skip  (no lib/modules: each kernel's modules are appended per kernel)
    assert list(entries) == sorted(entries)  # sorted: reproducible and parents first
    for name in ("init", "bin/zapmigrate", "bin/busybox"):
        entry = entries[name]
        assert stat.S_ISREG(entry.mode) and stat.S_IMODE(entry.mode) == 0o755
        assert entry.data[:4] == b"\x7fELF"
        assert b"/lib64/ld-linux" not in entry.data[:4096]  # static: no PT_INTERP path
    for name in applets:
        assert stat.S_ISLNK(entries[name].mode) and entries[name].data == b"busybox"
    console = entries["dev/console"]
    assert stat.S_ISCHR(console.mode) and console.rdev == (5, 1)
    assert stat.S_IMODE(entries["tmp"].mode) == 0o1777
    assert all(stat.S_ISDIR(entries[d].mode) for d in ("bin", "dev", "proc", "sys", "tmp"))
    assert entries["bin/busybox"].data == Path("/bin/busybox").read_bytes()


def test_programs_are_static(built: tuple[Path, Path, list[str]], tmp_path: Path) -> None:
    entries = entries_of(built[1])
    for name in ("init", "bin/zapmigrate"):
        path = tmp_path / name.replace("/", "_")
        path.write_bytes(entries[name].data)
        assert guest_image._is_static_elf(path)


def test_second_call_is_a_cache_hit(built: tuple[Path, Path, list[str]]) -> None:
    cache, image, _ = built
    before = image.stat().st_mtime_ns
    messages: list[str] = []
    started = time.monotonic()
    again = build_initramfs(cache, progress=messages.append)
    assert time.monotonic() - started < 1.0
    assert again == image
    assert image.stat().st_mtime_ns == before
    assert not any("compiling" in m for m in messages)
    assert [p.name for p in (cache / "guest").iterdir()] == [image.name]  # no build leftovers


def test_modes_let_qemu_read_it(built: tuple[Path, Path, list[str]]) -> None:
    _, image, _ = built
    assert stat.S_IMODE(image.stat().st_mode) == 0o644
    assert stat.S_IMODE(image.parent.stat().st_mode) == 0o755


def test_rebuild_is_byte_identical(built: tuple[Path, Path, list[str]], tmp_path: Path) -> None:
    _, image, _ = built
    other = build_initramfs(tmp_path)
    assert other.name == image.name
    assert other.read_bytes() == image.read_bytes()


def test_digest_names_the_sources() -> None:
    digest = guest_image.guest_sources_digest()
    assert len(digest) == 64 and digest == guest_image.guest_sources_digest()
    assert guest_image.image_digest() != digest


def test_newc_round_trip() -> None:
    entries = [
        CpioEntry("a", stat.S_IFDIR | 0o755),
        CpioEntry("a/odd", stat.S_IFREG | 0o644, b"x" * 5),
        CpioEntry("a/link", stat.S_IFLNK | 0o777, b"odd"),
        CpioEntry("a/null", stat.S_IFCHR | 0o666, rdev=(1, 3)),
    ]
    data = write_newc(entries)
    assert len(data) % 4 == 0
    assert read_newc(data) == entries


def test_missing_busybox_names_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(guest_image, "BUSYBOX", tmp_path / "busybox")
    with pytest.raises(guest_image.GuestImageError, match="apt-get install busybox-static"):
        build_initramfs(tmp_path)
    dynamic = tmp_path / "busybox"
    dynamic.write_bytes(Path("/bin/ls").read_bytes())  # a dynamically linked ELF
    with pytest.raises(guest_image.GuestImageError, match="dynamically linked"):
        build_initramfs(tmp_path)


def test_missing_compiler_names_the_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(guest_image, "CC", "zapfarm-no-such-cc")
    with pytest.raises(guest_image.GuestImageError, match="apt-get install gcc"):
        build_initramfs(tmp_path)


def test_with_program_appends_an_archive_that_replaces_the_trial_program(
    built: tuple[Path, Path, list[str]], tmp_path: Path
) -> None:
    cache, image, _ = built
    source = tmp_path / "p.c"
    source.write_text("int main(void) { return 3; }\n")
    program = tmp_path / "p"
    guest_image.compile_static(source, program)
    extended = guest_image.with_program(cache, program)
    data = extended.read_bytes()
    assert data.startswith(image.read_bytes())  # the farm's image, untouched, then the extra
    first, extra = gzip_members(data)
    assert {e.name for e in read_newc(first)} >= {"bin/zapmigrate", "init"}
    added = {e.name: e for e in read_newc(extra)}
    assert set(added) == {"bin/zapfarm-program", "bin/zapmigrate"}
    assert added["bin/zapfarm-program"].data == program.read_bytes()
    assert b"/bin/zapfarm-program" in added["bin/zapmigrate"].data  # the stderr-joining wrapper
    assert stat.S_IMODE(added["bin/zapmigrate"].mode) == 0o755
    assert guest_image.with_program(cache, program) == extended  # cached
    dynamic = tmp_path / "dyn"
    subprocess.run(["gcc", "-o", str(dynamic), str(source)], check=True)
    with pytest.raises(guest_image.GuestImageError, match="not a static ELF"):
        guest_image.with_program(cache, dynamic)
