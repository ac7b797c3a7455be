"""farm/artifacts/modules.py: which modules a kernel's guest image carries, in what order.

The agent loads ``zapfarm.order`` line by line with ``finit_module`` and no
fallback, so a dependency listed after its user, a file left compressed or a
stale appended archive each leave the swapped scenarios without swap.
"""

from __future__ import annotations

import gzip
import lzma
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from archives import gzip_members

from farm.artifacts import modules
from farm.artifacts.guest_image import CpioEntry, read_newc
from farm.artifacts.modules import ModuleError, ModuleSet

HOST_RELEASE_TREES = sorted(Path("/lib/modules").glob("*/kernel/drivers/block/zram/zram.ko"))


def elf(tag: str) -> bytes:
    return b"\x7fELF" + tag.encode() * 50


def test_load_order_puts_every_dependency_before_its_user() -> None:
    deps = modules.parse_modules_dep(
        "kernel/drivers/block/zram/zram.ko.xz: kernel/lib/a.ko.xz kernel/lib/b-x.ko.xz\n"
        "kernel/lib/a.ko.xz: kernel/lib/c.ko.xz\n"
        "kernel/lib/b-x.ko.xz: kernel/lib/c.ko.xz\n"
        "kernel/lib/c.ko.xz:\n"
        "kernel/fs/ext4/ext4.ko.xz: kernel/lib/c.ko.xz\n"
    )
    order = modules.load_order(deps, ["zram"])
    assert sorted(order) == sorted(set(deps) - {"kernel/fs/ext4/ext4.ko.xz"})  # closure, once each
    for path in order:
        assert all(order.index(dep) < order.index(path) for dep in deps[path]), order
    assert order[-1].endswith("zram.ko.xz")
    assert modules.load_order(deps, ["b_x"]) == ["kernel/lib/c.ko.xz", "kernel/lib/b-x.ko.xz"]


@pytest.mark.parametrize(
    ("dep_text", "message"),
    [
        ("kernel/fs/ext4/ext4.ko:\n", "lists no module 'zram'"),
        ("zram.ko: zsmalloc.ko\n", "lists no entry for it"),
        ("zram.ko: a.ko\na.ko: zram.ko\n", "cycle"),
    ],
)
def test_load_order_refuses_what_modules_dep_cannot_satisfy(dep_text: str, message: str) -> None:
    with pytest.raises(ModuleError, match=message):
        modules.load_order(modules.parse_modules_dep(dep_text), ["zram"])


@pytest.mark.parametrize("suffix", [".ko", ".ko.xz", ".ko.zst", ".ko.gz"])
def test_decompress_gives_the_elf_back(tmp_path: Path, suffix: str) -> None:
    data = elf("zram")
    path = tmp_path / f"zram{suffix}"
    if suffix == ".ko.xz":
        path.write_bytes(lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32))
    elif suffix == ".ko.gz":
        path.write_bytes(gzip.compress(data))
    elif suffix == ".ko.zst":
        if shutil.which("zstd") is None:
            pytest.skip("zstd is not installed (deploy/setup-host.sh installs it)")
        path.write_bytes(subprocess.run(["zstd", "-c"], input=data, capture_output=True).stdout)
    else:
        path.write_bytes(data)
    assert path.read_bytes() != data or suffix == ".ko"
    assert modules.decompress(path) == data
    garbage = tmp_path / "garbage.ko.gz"
    garbage.write_bytes(gzip.compress(b"not an elf"))
    with pytest.raises(ModuleError, match="not a kernel module"):
        modules.decompress(garbage)


@pytest.mark.skipif(not HOST_RELEASE_TREES, reason="the host has no zram.ko to build a tree from")
def test_keep_modules_runs_depmod_on_a_usr_merged_package_and_decompresses(tmp_path: Path) -> None:
    """As a trixie package unpacks: usr/lib/modules/<r>, .ko.xz, no modules.dep."""
    host_tree = HOST_RELEASE_TREES[0].parents[4]  # /lib/modules/<release>
    release = "6.12.0-test-amd64"
    root = tmp_path / "pkg"
    tree = root / "usr/lib/modules" / release
    originals = {}
    for rel in ("kernel/drivers/block/zram/zram.ko", "kernel/mm/zsmalloc.ko"):
        data = (host_tree / rel).read_bytes()
        originals[Path(rel).name] = data
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / f"{rel}.xz").write_bytes(lzma.compress(data, check=lzma.CHECK_CRC32))
    dest = tmp_path / "kernel" / "modules"
    names = modules.keep_modules(root, release, dest)
    assert (tree / "modules.dep").is_file()  # depmod -b wrote it, through the lib link
    assert names == ["zsmalloc.ko", "zram.ko"]  # zram needs zsmalloc: it loads first
    kept = dest / release
    assert (kept / "zapfarm.order").read_text() == "zsmalloc.ko\nzram.ko\n"
    assert sorted(p.name for p in kept.iterdir()) == ["zapfarm.order", "zram.ko", "zsmalloc.ko"]
    for name, data in originals.items():
        assert (kept / name).read_bytes() == data
        assert stat.S_IMODE((kept / name).stat().st_mode) == 0o644  # QEMU needs none, people do
    assert modules.keep_modules(root, release, dest) == names  # again: replaced, not piled up
    assert [p.name for p in dest.iterdir()] == [release]


def test_keep_modules_writes_nothing_when_zram_is_built_in(tmp_path: Path) -> None:
    tree = tmp_path / "pkg" / "lib/modules/5.10.0-1-amd64"
    tree.mkdir(parents=True)
    (tree / "modules.dep").write_text("kernel/fs/ext4/ext4.ko:\n")
    dest = tmp_path / "modules"
    assert modules.keep_modules(tmp_path / "pkg", "5.10.0-1-amd64", dest) == []
    assert not dest.exists()
    with pytest.raises(ModuleError, match=r"no lib/modules/6\.1\.0-9-amd64"):
        modules.keep_modules(tmp_path / "pkg", "6.1.0-9-amd64", dest)


def fetched_kernel(tmp_path: Path, release: str = "5.10.0-46-amd64") -> Path:
    """A kernel folder as ``farm kernels fetch`` leaves it."""
    folder = tmp_path / "kernels" / f"debian-bullseye-{release}"
    kept = folder / "modules" / release
    kept.mkdir(parents=True)
    (folder / "vmlinuz").write_bytes(b"bzImage")
    (kept / "zsmalloc.ko").write_bytes(elf("zsmalloc"))
    (kept / "zram.ko").write_bytes(elf("zram"))
    (kept / "zapfarm.order").write_text("zsmalloc.ko\nzram.ko\n")
    return folder / "vmlinuz"


def test_kernel_modules_of_fetched_installed_and_built_kernels(tmp_path: Path) -> None:
    kernel = fetched_kernel(tmp_path)
    found = modules.kernel_modules(kernel, host_modules=tmp_path / "none")
    kept = kernel.parent / "modules/5.10.0-46-amd64"
    assert found == ModuleSet("5.10.0-46-amd64", (kept / "zsmalloc.ko", kept / "zram.ko"))
    host = tmp_path / "lib-modules"
    tree = host / "6.1.0-9-amd64"
    (tree / "kernel/mm").mkdir(parents=True)
    (tree / "kernel/mm/zsmalloc.ko.xz").write_bytes(lzma.compress(elf("zsmalloc")))
    (tree / "kernel/zram.ko").write_bytes(elf("zram"))
    (tree / "modules.dep").write_text(
        "kernel/mm/zsmalloc.ko.xz:\nkernel/zram.ko: kernel/mm/zsmalloc.ko.xz\n"
    )
    installed = modules.kernel_modules(Path("/boot/vmlinuz-6.1.0-9-amd64"), host_modules=host)
    assert installed == ModuleSet(
        "6.1.0-9-amd64", (tree / "kernel/mm/zsmalloc.ko.xz", tree / "kernel/zram.ko")
    )
    built = tmp_path / "kernels" / "build-6.1-plain-0123abcd" / "bzImage"
    built.parent.mkdir(parents=True)
    built.write_bytes(b"bzImage")
    assert modules.kernel_modules(built, host_modules=host) is None  # zram built in
    assert modules.kernel_modules(Path("/boot/vmlinuz-9.9.9-none"), host_modules=host) is None


def base_image(tmp_path: Path, tag: str = "a") -> Path:
    folder = tmp_path / "guest"
    folder.mkdir(exist_ok=True)
    base = folder / f"initramfs-{tag * 16}.cpio.gz"
    base.write_bytes(gzip.compress(b"base archive " + tag.encode(), mtime=0))
    return base


def test_with_modules_appends_the_kernels_own_archive(tmp_path: Path) -> None:
    base = base_image(tmp_path)
    kernel = fetched_kernel(tmp_path)
    image = modules.with_modules(base, kernel)
    assert image.parent == base.parent and image != base
    assert stat.S_IMODE(image.stat().st_mode) == 0o644
    data = image.read_bytes()
    assert data.startswith(base.read_bytes())  # the base, untouched, then the modules
    first, extra = gzip_members(data)
    assert first == b"base archive a"
    folder = "lib/modules/5.10.0-46-amd64"
    entries = {e.name: e for e in read_newc(extra)}
    assert list(entries) == ["lib", "lib/modules", folder, f"{folder}/zapfarm.order",
                             f"{folder}/zsmalloc.ko", f"{folder}/zram.ko"]  # fmt: skip
    assert entries[f"{folder}/zapfarm.order"].data == b"zsmalloc.ko\nzram.ko\n"
    assert entries[f"{folder}/zram.ko"] == CpioEntry(
        f"{folder}/zram.ko", stat.S_IFREG | 0o644, elf("zram")
    )
    assert all(stat.S_ISDIR(entries[d].mode) for d in ("lib", "lib/modules", folder))


def test_with_modules_is_cached_and_rebuilt_when_base_or_modules_change(tmp_path: Path) -> None:
    base = base_image(tmp_path)
    kernel = fetched_kernel(tmp_path)
    image = modules.with_modules(base, kernel)
    before = image.stat().st_mtime_ns
    assert modules.with_modules(base, kernel) == image
    assert image.stat().st_mtime_ns == before  # a cache hit writes nothing
    assert sorted(p.name for p in base.parent.iterdir()) == sorted([base.name, image.name])

    other_base = modules.with_modules(base_image(tmp_path, "b"), kernel)
    assert other_base != image and gzip_members(other_base.read_bytes())[0] == b"base archive b"

    (kernel.parent / "modules/5.10.0-46-amd64/zram.ko").write_bytes(elf("zram, rebuilt"))
    changed = modules.with_modules(base, kernel)
    assert changed not in (image, other_base)
    assert elf("zram, rebuilt") in gzip_members(changed.read_bytes())[1]
    assert image.read_bytes() != changed.read_bytes()

    bare = tmp_path / "kernels" / "custom" / "bzImage"
    bare.parent.mkdir(parents=True)
    bare.write_bytes(b"bzImage")
    assert modules.with_modules(base, bare) == base  # no modules: the base as it is


def test_the_pool_boots_each_kernel_with_its_own_image(tmp_path: Path) -> None:
    """The initrd in a kernel's GuestConfig is what it boots and what its memory image is
    keyed on (workers/snapshot.py hashes config.initrd)."""
    from workers.pool import GuestPool
    from workers.vm import GuestError

    base = base_image(tmp_path)
    pool = GuestPool(conn=None, initrd=base, console_dir=tmp_path, virt_type="qemu")  # type: ignore[arg-type]
    fetched = fetched_kernel(tmp_path)
    config = pool.config("debian-bullseye-5.10.0-46-amd64", fetched)
    assert config.initrd == modules.with_modules(base, fetched) != base
    built = tmp_path / "kernels" / "build-6.1-plain-0123abcd" / "bzImage"
    built.parent.mkdir(parents=True)
    built.write_bytes(b"bzImage")
    assert pool.config("build-6.1-plain-0123abcd", built).initrd == base
    (fetched.parent / "modules/5.10.0-46-amd64/zram.ko").unlink()
    with pytest.raises(GuestError, match="cannot add the modules"):
        pool.config("debian-bullseye-5.10.0-46-amd64", fetched)
