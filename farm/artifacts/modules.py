"""The kernel modules a guest loads: zram and its dependencies, for swap on zram0.

The swapped scenarios need swap, and a stock Debian kernel builds zram as a
module (5.10 and 6.1 with ``zsmalloc.ko``; 6.12 with the lz4 libraries of its
default backend). The guest has no modprobe and no module tree: the agent
(``guest/agent.c``) loads the files ``/lib/modules/<uname -r>/zapfarm.order``
names, in that order, and then puts swap on zram0.

So each kernel's modules travel in an archive appended to the guest image
(the kernel unpacks concatenated archives in order): :func:`with_modules`
returns the base image plus that archive, built once per (base image, module
bytes) and cached beside the base. Where a kernel's modules come from:

- a fetched Debian kernel: ``cache_dir/kernels/<name>/modules/<release>/``,
  kept by ``farm kernels fetch`` (:func:`keep_modules`): the closure of
  :data:`SWAP_MODULES` in load order, decompressed (the agent's
  ``finit_module`` gets the file as it is, and the guest kernel may lack the
  in-kernel decompressor) and named in ``zapfarm.order``;
- the host's installed kernel (``/boot/vmlinuz-<release>``): the host's
  ``/lib/modules/<release>``, decompressed when the archive is written;
- anything else (farm builds have zram built in): no archive, the base image.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from farm.artifacts.guest_image import CpioEntry, write_newc

SWAP_MODULES = ("zram",)  # their dependencies come from modules.dep
ORDER_FILE = "zapfarm.order"  # the agent reads this name (guest/agent.c, load_modules)
MODULES_DIR = "modules"  # in a kernel's cache folder: modules/<release>/
HOST_MODULES = Path("/lib/modules")
COMPRESSED = {".xz": "xz", ".zst": "zstd", ".gz": "gzip"}


class ModuleError(RuntimeError):
    """A kernel's modules cannot be resolved or unpacked; the message names the fix."""


@dataclass(frozen=True)
class ModuleSet:
    """One kernel release's modules in load order (each after everything it needs)."""

    release: str
    files: tuple[Path, ...]  # .ko, or compressed .ko.xz/.ko.zst/.ko.gz (host trees)


def module_name(path: str) -> str:
    """``kernel/mm/zsmalloc.ko.xz`` -> ``zsmalloc`` (modules.dep's names use ``_`` and ``-``)."""
    return Path(path).name.split(".ko", 1)[0].replace("-", "_")


def parse_modules_dep(text: str) -> dict[str, list[str]]:
    """modules.dep as {module path: paths it depends on}."""
    deps: dict[str, list[str]] = {}
    for line in text.splitlines():
        target, sep, rest = line.partition(":")
        if sep and target.strip():
            deps[target.strip()] = rest.split()
    return deps


def load_order(deps: dict[str, list[str]], wanted: Iterable[str]) -> list[str]:
    """Paths of the ``wanted`` modules and of everything they need, dependencies first.

    A depth-first walk rather than modules.dep's own list order, so the result
    does not rest on how depmod ordered a line. Raises ModuleError for a module
    or dependency modules.dep does not list, and for a cycle.
    """
    by_name = {module_name(path): path for path in deps}
    order: list[str] = []
    visiting: set[str] = set()

    def visit(path: str) -> None:
        if path in order:
            return
        if path in visiting:
            raise ModuleError(f"modules.dep has a dependency cycle through {path}")
        if path not in deps:
            raise ModuleError(f"modules.dep names {path} as a dependency but lists no entry for it")
        visiting.add(path)
        for dep in deps[path]:
            visit(dep)
        visiting.discard(path)
        order.append(path)

    for name in wanted:
        path = by_name.get(module_name(name))
        if path is None:
            raise ModuleError(f"modules.dep lists no module {name!r}")
        visit(path)
    return order


def decompress(path: Path) -> bytes:
    """A module's ELF bytes, whether stored as ``.ko``, ``.ko.xz``, ``.ko.zst`` or ``.ko.gz``."""
    data = path.read_bytes()
    if path.suffix == ".xz":
        data = lzma.decompress(data)
    elif path.suffix == ".gz":
        data = gzip.decompress(data)
    elif path.suffix == ".zst":
        if shutil.which("zstd") is None:
            raise ModuleError(f"{path} is zstd-compressed: install zstd (`apt-get install zstd`)")
        done = subprocess.run(["zstd", "-dcq", str(path)], capture_output=True, check=False)
        if done.returncode != 0:
            raise ModuleError(f"`zstd -dc {path}` failed: {done.stderr.decode().strip()}")
        data = done.stdout
    if data[:4] != b"\x7fELF":
        raise ModuleError(f"{path} is not a kernel module (no ELF header after decompression)")
    return data


def module_tree(root: Path, release: str) -> Path | None:
    """``root``'s module folder of ``release``: ``lib/modules/<r>`` or, usr-merged (trixie),
    ``usr/lib/modules/<r>``."""
    for sub in ("lib/modules", "usr/lib/modules"):
        tree = root / sub / release
        if tree.is_dir():
            return tree
    return None


def ensure_modules_dep(root: Path, release: str) -> Path:
    """The module folder of an unpacked linux-image package, with a modules.dep.

    Debian's packages ship no modules.dep (their postinst runs depmod), so
    ``depmod -b`` writes one. kmod 30 (bookworm) only looks under
    ``<base>/lib/modules``: a usr-merged tree gets a ``lib -> usr/lib`` link.
    """
    tree = module_tree(root, release)
    if tree is None:
        raise ModuleError(f"the package holds no lib/modules/{release}")
    if (tree / "modules.dep").is_file():
        return tree
    if not (root / "lib").exists():
        (root / "lib").symlink_to("usr/lib")
    depmod = shutil.which("depmod") or next(
        (p for p in ("/usr/sbin/depmod", "/sbin/depmod") if Path(p).is_file()), None
    )
    if depmod is None:
        raise ModuleError("depmod not found: install kmod (`apt-get install kmod`)")
    done = subprocess.run(
        [depmod, "-b", str(root), release], capture_output=True, text=True, check=False
    )
    if done.returncode != 0 or not (tree / "modules.dep").is_file():
        raise ModuleError(f"`depmod -b {root} {release}` failed: {done.stderr.strip()}")
    return tree


def resolve(tree: Path, wanted: Iterable[str] = SWAP_MODULES) -> list[Path]:
    """The files of ``wanted`` and their dependencies under ``tree``, in load order."""
    dep_file = tree / "modules.dep"
    if not dep_file.is_file():
        raise ModuleError(f"{tree} has no modules.dep")
    paths = load_order(parse_modules_dep(dep_file.read_text(errors="replace")), wanted)
    files = [tree / p for p in paths]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ModuleError(f"modules.dep names files that are not there: {', '.join(missing)}")
    names = [module_name(f.name) for f in files]
    if len(set(names)) != len(names):
        raise ModuleError(f"two modules of one name in {tree}: {names}")
    return files


def keep_modules(
    root: Path, release: str, dest: Path, wanted: Iterable[str] = SWAP_MODULES
) -> list[str]:
    """Copy ``wanted`` and their dependencies from an unpacked package under ``root`` into
    ``dest/<release>/``, decompressed, with their load order in ``zapfarm.order``.

    Returns the file names in load order; [] (and nothing written) when the
    kernel has none of ``wanted`` as a module (built in, or not at all).
    """
    tree = ensure_modules_dep(root, release)
    deps = parse_modules_dep((tree / "modules.dep").read_text(errors="replace"))
    wanted = [w for w in wanted if any(module_name(p) == module_name(w) for p in deps)]
    if not wanted:
        return []
    files = resolve(tree, wanted)
    dest.mkdir(parents=True, exist_ok=True)
    dest.chmod(0o755)
    names = [f"{module_name(f.name)}.ko" for f in files]
    with tempfile.TemporaryDirectory(prefix=".modules-", dir=dest) as tmp:
        staging = Path(tmp) / release
        staging.mkdir(mode=0o755)
        for name, src in zip(names, files, strict=True):
            (staging / name).write_bytes(decompress(src))
        (staging / ORDER_FILE).write_text("".join(f"{n}\n" for n in names))
        for path in staging.iterdir():
            path.chmod(0o644)
        staging.chmod(0o755)
        final = dest / release
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    return names


def kernel_modules(kernel: Path, host_modules: Path = HOST_MODULES) -> ModuleSet | None:
    """The modules that go with the kernel image ``kernel``; None when it needs none."""
    kept = kernel.parent / MODULES_DIR
    for order in sorted(kept.glob(f"*/{ORDER_FILE}")) if kept.is_dir() else []:
        names = [n for n in order.read_text().split() if "/" not in n]
        return ModuleSet(order.parent.name, tuple(order.parent / n for n in names))
    if kernel.name.startswith("vmlinuz-"):  # an installed kernel: /boot/vmlinuz-<release>
        release = kernel.name.removeprefix("vmlinuz-")
        tree = host_modules / release
        if (tree / "modules.dep").is_file():
            deps = parse_modules_dep((tree / "modules.dep").read_text(errors="replace"))
            if any(module_name(p) in SWAP_MODULES for p in deps):
                return ModuleSet(release, tuple(resolve(tree)))
    return None


def module_archive(modules: ModuleSet) -> bytes:
    """The newc archive that puts ``modules`` under ``/lib/modules/<release>/`` for the agent."""
    folder = f"lib/modules/{modules.release}"
    names = [f"{module_name(f.name)}.ko" for f in modules.files]
    entries = [
        CpioEntry("lib", stat.S_IFDIR | 0o755),
        CpioEntry("lib/modules", stat.S_IFDIR | 0o755),
        CpioEntry(folder, stat.S_IFDIR | 0o755),
        CpioEntry(
            f"{folder}/{ORDER_FILE}",
            stat.S_IFREG | 0o644,
            "".join(f"{n}\n" for n in names).encode(),
        ),
        *(
            CpioEntry(f"{folder}/{n}", stat.S_IFREG | 0o644, decompress(f))
            for n, f in zip(names, modules.files, strict=True)
        ),
    ]
    return write_newc(entries)


def with_modules(base: Path, kernel: Path, host_modules: Path = HOST_MODULES) -> Path:
    """The guest image for ``kernel``: ``base`` with the kernel's module archive appended.

    ``base`` itself when the kernel needs no modules. The result sits beside
    ``base``, named after it and the archive's sha256, so a new base image or
    changed module bytes make a new file and an unchanged pair is reused.
    """
    modules = kernel_modules(kernel, host_modules)
    if modules is None:
        return base
    archive = module_archive(modules)
    digest = hashlib.sha256(archive).hexdigest()[:16]
    image = base.with_name(base.name.replace(".cpio.gz", "") + f"-mod-{digest}.cpio.gz")
    if image.is_file():
        return image
    with tempfile.NamedTemporaryFile(dir=base.parent, prefix=".mod-", delete=False) as tmp:
        try:
            tmp.write(base.read_bytes())
            tmp.write(gzip.compress(archive, compresslevel=6, mtime=0))
            tmp.close()
            os.chmod(tmp.name, 0o644)
            os.replace(tmp.name, image)  # atomic: a concurrent builder writes the same bytes
        except BaseException:
            Path(tmp.name).unlink(missing_ok=True)
            raise
    return image
