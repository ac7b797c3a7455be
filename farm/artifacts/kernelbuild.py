"""Build small guest kernels from Debian's linux-source packages.

The farm needs kernels Debian does not ship: the positive control (the fix
5abfd71d936a reverted, plus the seed's WARN_ON_ONCE at the skip site) and
instrumented variants of each series. A build is tinyconfig plus
``guest/kernel/config.fragment`` (checked option by option after
``make olddefconfig``), plus the patches of the chosen flags from
``guest/kernel/patches/<flag>/<series>/``.

Builds are cached by a key over everything that goes in (source package
version, fragments, patches, flags, this builder's version): the same key
never builds twice, and a changed input can never reuse a stale image.
The result lands in ``cache_dir/kernels/build-<series>-<flags>-<key8>/``; the
tarballs, excerpts, logs and build trees live in dot-folders beside it, since
every other folder of ``cache_dir/kernels`` is a kernel (workers.host lists them).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from farm.artifacts.kernels import (
    KernelError,
    KernelImage,
    inspect_bzimage,
    kernels_dir,
    place_image,
    read_manifest,
    sha256_of,
    write_manifest,
)
from farm.artifacts.sources import (
    Progress,
    SourceTarball,
    check_series,
    extract,
    get_source,
)

BUILDER_VERSION = 1  # bump when the way a build is made changes (not its inputs)
KERNEL_DIR = Path(__file__).resolve().parents[2] / "guest" / "kernel"
ARCH = "x86_64"
# warn: the seed's WARN_ON_ONCE at the skip site (once per boot, taints);
# count: vm events in /proc/vmstat for every window entry and skip (no WARN, no taint)
INSTRUMENTS = ("warn", "count")
# patch sets in the order they apply; each is guest/kernel/patches/<set>/<series>/*.patch
PATCH_ORDER = ("revert-fix", "warn", "count")
# rough number of make steps of one build (a progress bar total, refined by past builds)
EXPECTED_STEPS = {"5.10": 1400, "6.1": 1480, "6.12": 1600}

StepCallback = Callable[[int, str], None]  # (steps so far, what make is doing now)

_CONFIG_LINE = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET_LINE = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")
_MAKE_STEP = re.compile(
    r"^\s+(CC|AS|LD|AR|HOSTCC|HOSTLD|GEN|SYSHDR|SYSTBL|WRAP|UPD|CALL|OBJCOPY|"
    r"LDS|MKPIGGY|ZOFFSET|VOFFSET|RELOCS|KSYMS|BUILD|POLICY|DESCEND|CHK|XZKERN|GZIP|"
    r"MODPOST|SORTTAB|NM|CPUSTR|MKREQ|HYPERCALLS|AS_\w+|CC_\w+)\s+(\S+)"
)


# --- what a build is -------------------------------------------------------------


@dataclass(frozen=True)
class BuildSpec:
    series: str
    instrument: str | None = None
    revert_fix: bool = False
    # a developer's own patches, applied in this order after the farm's
    user_patches: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        check_series(self.series)
        if self.instrument is not None and self.instrument not in INSTRUMENTS:
            raise KernelError(
                f"unknown instrumentation {self.instrument!r}: use one of {', '.join(INSTRUMENTS)}"
            )
        for patch in self.user_patches:
            if not patch.is_file():
                raise KernelError(f"--patch {patch}: no such file (give a path to a unified diff)")

    @property
    def patch_sets(self) -> list[str]:
        chosen = {"revert-fix": self.revert_fix}
        chosen.update({name: self.instrument == name for name in INSTRUMENTS})
        return [name for name in PATCH_ORDER if chosen[name]]

    @property
    def flags(self) -> str:
        """The flags part of the kernel name: warn-revertfix, warn, revertfix or plain."""
        parts = [self.instrument] if self.instrument else []
        parts += ["revertfix"] if self.revert_fix else []
        parts += ["patched"] if self.user_patches else []
        return "-".join(parts) or "plain"


def fragments_for(series: str, kernel_dir: Path = KERNEL_DIR) -> list[Path]:
    """The common fragment, then ``config-<series>.fragment`` if there is one."""
    common = kernel_dir / "config.fragment"
    if not common.is_file():
        raise KernelError(f"{common} is missing (run from a zapfarm checkout)")
    own = kernel_dir / f"config-{series}.fragment"
    return [common, own] if own.is_file() else [common]


def patches_for(spec: BuildSpec, kernel_dir: Path = KERNEL_DIR) -> list[Path]:
    """Patch files in the order they apply; a chosen flag without patches is an error."""
    found: list[Path] = []
    for name in spec.patch_sets:
        folder = kernel_dir / "patches" / name / spec.series
        patches = sorted(folder.glob("*.patch"))
        if not patches:
            raise KernelError(f"no patches for {name} on {spec.series}: {folder}/*.patch is empty")
        found += patches
    return found + [p.resolve() for p in spec.user_patches]


def parse_fragment(paths: list[Path]) -> dict[str, str]:
    """CONFIG_X -> wanted value ("y", "4", '"text"', or "n" for "is not set"); later wins."""
    wanted: dict[str, str] = {}
    for path in paths:
        for n, raw in enumerate(path.read_text().splitlines(), 1):
            line = raw.strip()
            if m := _CONFIG_LINE.match(line):
                wanted[m[1]] = m[2]
            elif m := _UNSET_LINE.match(line):
                wanted[m[1]] = "n"
            elif line and not line.startswith("#"):
                raise KernelError(f"{path}:{n}: not a config line: {raw!r}")
    return wanted


def read_config(path: Path) -> dict[str, str]:
    """A .config as CONFIG_X -> value ("n" for "is not set")."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if m := _CONFIG_LINE.match(line):
            values[m[1]] = m[2]
        elif m := _UNSET_LINE.match(line):
            values[m[1]] = "n"
    return values


def build_key(
    package_version: str, spec: BuildSpec, fragments: list[Path], patches: list[Path]
) -> str:
    """sha256 over every input of a build: what the cache is keyed by."""
    digest = hashlib.sha256()
    digest.update(f"builder {BUILDER_VERSION}\narch {ARCH}\n".encode())
    digest.update(f"source linux-source-{spec.series} {package_version}\n".encode())
    digest.update(f"flags {spec.flags}\n".encode())
    for kind, files in (("fragment", fragments), ("patch", patches)):
        for path in files:
            digest.update(f"{kind} {path.name}\n".encode())
            digest.update(path.read_bytes())
            digest.update(b"\n")
    return digest.hexdigest()


def build_name(spec: BuildSpec, key: str) -> str:
    return f"build-{spec.series}-{spec.flags}-{key[:8]}"


def patch_provenance(patches: list[Path], kernel_dir: Path = KERNEL_DIR) -> list[dict[str, str]]:
    """Each applied patch in order: its name, sha256 and whether it is the farm's or the user's."""
    out = []
    for path in patches:
        farm_own = path.is_relative_to(kernel_dir)
        out.append(
            {
                "name": str(path.relative_to(kernel_dir)) if farm_own else path.name,
                "sha256": sha256_of(path),
                "origin": "farm" if farm_own else "user",
            }
        )
    return out


def provenance(
    source: str,
    spec_flags: dict[str, object],
    patches: list[Path],
    fragments: list[Path],
    config_base: str,
    kernel_dir: Path = KERNEL_DIR,
) -> dict[str, object]:
    """What went into an image, stored with it and shown on the kernels page and in the API."""
    return {
        "source": source,
        **spec_flags,
        "patches": patch_provenance(patches, kernel_dir),
        "fragments": [{"name": f.name, "sha256": sha256_of(f)} for f in fragments],
        "config_base": config_base,
        "builder": BUILDER_VERSION,
    }


def kconfig_symbols(tree: Path) -> set[str]:
    """Every CONFIG_ symbol some Kconfig file in ``tree`` defines."""
    symbols: set[str] = set()
    pattern = re.compile(r"^\s*(?:menu)?config\s+([A-Za-z0-9_]+)\s*$", re.M)
    for path in tree.rglob("Kconfig*"):
        if path.is_file():
            symbols.update(f"CONFIG_{s}" for s in pattern.findall(path.read_text(errors="replace")))
    return symbols


def apply_patches(tree: Path, patches: list[Path], *, dry_run: bool = False) -> None:
    """Apply patches in order with ``patch -p1 --fuzz=0`` (no fuzz: a hunk lands where
    it was written or not at all). ``dry_run`` checks each against the tree as is.

    git format-patch output and plain ``diff -u`` output with a/ b/ prefixes both apply.
    """
    for n, patch in enumerate(patches):
        cmd = ["patch", "-p1", "--fuzz=0", "--batch", "--forward", "--no-backup-if-mismatch"]
        if dry_run:
            cmd.append("--dry-run")
        try:
            done = subprocess.run(
                [*cmd, "-i", str(patch)], cwd=tree, capture_output=True, text=True, check=False
            )
        except FileNotFoundError as exc:
            raise KernelError("patch not found: install it with `apt-get install patch`") from exc
        if done.returncode != 0:
            raise KernelError(
                describe_patch_failure(patch, patches[:n], tree, done.stdout + done.stderr)
            )


_PATCHING = re.compile(r"^(?:checking|patching) file '?([^'\n]+?)'?$", re.M)
_HUNK_FAILED = re.compile(r"^Hunk #(\d+) FAILED at (\d+)", re.M)


def describe_patch_failure(patch: Path, before: list[Path], tree: Path, output: str) -> str:
    """Which patch, which file and hunk failed, and how to fix it, from patch(1)'s output."""
    lines = output.strip().splitlines()
    failed: list[str] = []
    current = "?"
    for line in lines:
        if m := _PATCHING.match(line):
            current = m[1]
        elif m := _HUNK_FAILED.match(line):
            failed.append(f"hunk #{m[1]} of {current} (at line {m[2]})")
    applied = ", ".join(p.name for p in before)
    after = f" after {applied}" if applied else ""
    if "Only garbage was found" in output or "doesn't seem to find a patch" in output:
        why = "it holds no unified diff"
        fix = "give a `git format-patch` or `diff -u` file"
    elif "Reversed (or previously applied) patch" in output:
        why = f"{', '.join(failed) or 'a hunk'} is already in the tree (reversed or applied before)"
        fix = "drop the patch, or the farm flag (--revert-fix/--instrument) that does the same"
    elif "can't find file to patch" in output:
        why = "a file it changes is not in the tree (paths must start with a/ and b/, as -p1 wants)"
        fix = "make the diff from the top of the kernel tree (`git diff` or `git format-patch`)"
    elif failed:
        why = f"{'; '.join(failed)} does not apply"
        fix = (
            f"rebase the patch onto {tree.name} as it stands{after} "
            "(no fuzz is allowed: a hunk lands where it was written or not at all)"
        )
    else:
        why = "patch(1) refused it"
        fix = "check that it is a unified diff made from the top of the kernel tree"
    detail = "\n".join(f"  | {line}" for line in lines[-12:])
    return f"{patch} does not apply to {tree.name}{after}: {why}.\nFix: {fix}.\n{detail}"


# --- configure and build -------------------------------------------------------------


def check_tools(need_libelf: bool = True) -> None:
    """Fail before unpacking anything when a build tool is missing, naming the package."""
    tools = {
        "make": "make",
        "gcc": "gcc",
        "flex": "flex",
        "bison": "bison",
        "bc": "bc",
        "patch": "patch",
        "tar": "tar",
        "xz": "xz-utils",
        "perl": "perl",
    }
    missing = sorted({pkg for tool, pkg in tools.items() if shutil.which(tool) is None})
    if need_libelf and not Path("/usr/include/gelf.h").is_file():
        missing.append("libelf-dev")  # objtool, for CONFIG_UNWINDER_ORC
    if missing:
        raise KernelError(
            f"kernel build tools missing: install them with `apt-get install {' '.join(missing)}`"
        )


def ccache_dir(cache_dir: Path) -> Path | None:
    """Where compiler outputs are cached when ccache is installed (None: it is not).

    Builds of one source share most objects (with and without --revert-fix only
    mm/memory.c differs), so the second variant compiles in a fraction of the time.
    """
    return kernels_dir(cache_dir) / ".ccache" if shutil.which("ccache") else None


def _make_env(tree: Path, ccache: Path | None = None) -> dict[str, str]:
    env = {
        **os.environ,
        "LC_ALL": "C",
        "KBUILD_BUILD_USER": "zapfarm",
        "KBUILD_BUILD_HOST": "zapfarm",
        "KBUILD_BUILD_TIMESTAMP": "1970-01-01",
    }
    if ccache is not None:
        # each build unpacks into a fresh folder: hash paths relative to it
        env.update(CCACHE_DIR=str(ccache), CCACHE_BASEDIR=str(tree), CCACHE_NOHASHDIR="1",
                   CCACHE_MAXSIZE="5G")  # fmt: skip
    return env


def _make_cmd(args: list[str], ccache: Path | None) -> list[str]:
    return ["make", f"ARCH={ARCH}", *(["CC=ccache gcc"] if ccache else []), *args]


def _run_make(tree: Path, args: list[str], log: Path, ccache: Path | None = None) -> None:
    with log.open("a") as out:
        out.write(f"$ make {' '.join(args)}\n")
        out.flush()
        done = subprocess.run(
            _make_cmd(args, ccache),
            cwd=tree,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_make_env(tree, ccache),
            check=False,
        )
    if done.returncode != 0:
        raise KernelError(f"`make {' '.join(args)}` failed in {tree}:\n{_tail(log)}\n(log: {log})")


def _tail(log: Path, lines: int = 25) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def configure(
    tree: Path,
    fragments: list[Path],
    log: Path,
    *,
    out: Path | None = None,
    base: Path | None = None,
    ccache: Path | None = None,
) -> dict[str, str]:
    """tinyconfig (or ``base``, a developer's own .config) + fragments + olddefconfig.

    Every fragment line must survive: the error names each option that did not,
    with the value it got and whether the source knows the option at all.
    ``out`` builds out of tree (``make O=out``): then nothing is written to ``tree``.
    Returns the final .config values.
    """
    wanted = parse_fragment(fragments)
    o_arg = [f"O={out}"] if out is not None else []
    config = (out or tree) / ".config"
    if base is None:
        _run_make(tree, [*o_arg, "tinyconfig"], log, ccache)
    else:
        shutil.copyfile(base, config)
    kept = [
        line
        for line in config.read_text().splitlines()
        if not ((m := _CONFIG_LINE.match(line) or _UNSET_LINE.match(line)) and m[1] in wanted)
    ]
    merged = [f"# {k} is not set" if v == "n" else f"{k}={v}" for k, v in wanted.items()]
    config.write_text("\n".join([*kept, *merged]) + "\n")
    _run_make(tree, [*o_arg, "olddefconfig"], log, ccache)
    have = read_config(config)
    lost = lost_options(wanted, have)
    if lost:
        raise KernelError(describe_lost(lost, have, fragments, kconfig_symbols(tree)))
    return have


def lost_options(wanted: dict[str, str], have: dict[str, str]) -> dict[str, str]:
    """Fragment options whose value did not make it into .config (absent counts as n)."""
    return {k: v for k, v in wanted.items() if have.get(k, "n") != v}


def describe_lost(
    lost: dict[str, str], have: dict[str, str], fragments: list[Path], known: set[str]
) -> str:
    """The error for options that did not survive: each with what it got, and why if known."""
    details = [
        f"  {k}: wanted {v}, got {have.get(k, 'not set')}"
        + ("" if k in known else " (no such option in this source)")
        for k, v in lost.items()
    ]
    return (
        f"{len(lost)} option(s) of {', '.join(str(f) for f in fragments)} did not survive "
        "`make olddefconfig` (a dependency is missing, or the option does not exist): "
        f"{', '.join(lost)}\n" + "\n".join(details)
    )


@dataclass
class BuildResult:
    image: KernelImage
    key: str
    spec: BuildSpec | None  # None: a developer's tree (build_tree)
    source: SourceTarball
    built: bool  # False: the cached image was reused
    seconds: float = 0.0
    make_seconds: float = 0.0
    steps: int = 0
    patches: list[str] = field(default_factory=list)
    folder: Path = Path()


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One builder per output folder: a second one waits, then finds the cached image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def expected_steps(cache_dir: Path, series: str) -> int:
    """The bar's total: the step count of an earlier build of the series, else a guess."""
    counts: list[int] = []
    for manifest_path in kernels_dir(cache_dir).glob(f"build-{series}-*/kernel.json"):
        data = read_manifest(manifest_path.parent) or {}
        steps = data.get("steps")
        if isinstance(steps, int) and data.get("series") == series:
            counts.append(steps)
    return max(counts) if counts else EXPECTED_STEPS.get(series, 1400)


def build(
    cache_dir: Path,
    spec: BuildSpec,
    *,
    jobs: int | None = None,
    refresh_source: bool = False,
    keep_tree: bool = False,
    progress: Progress | None = None,
    on_step: StepCallback | None = None,
    kernel_dir: Path = KERNEL_DIR,
) -> BuildResult:
    """Build (or find cached) the kernel ``spec`` describes; returns the registered-to-be image."""
    say = progress or (lambda _msg: None)
    started = time.monotonic()
    fragments = fragments_for(spec.series, kernel_dir)
    patches = patches_for(spec, kernel_dir)
    parse_fragment(fragments)  # a broken fragment fails before anything is fetched
    source = get_source(cache_dir, spec.series, refresh=refresh_source, progress=say)
    key = build_key(source.package_version, spec, fragments, patches)
    name = build_name(spec, key)
    folder = kernels_dir(cache_dir) / name
    source_label = f"build:linux-source-{spec.series}"
    with _locked(kernels_dir(cache_dir) / ".locks" / f"{name}.lock"):
        cached = _cached(folder, key, name, source_label)
        if cached is not None:
            say(f"{name} is cached in {folder}: nothing to build")
            return BuildResult(
                cached, key, spec, source, False, time.monotonic() - started,
                patches=[p.name for p in patches], folder=folder,
            )  # fmt: skip
        check_tools()
        work_root = kernels_dir(cache_dir) / ".work"
        work_root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=work_root))
        log = kernels_dir(cache_dir) / ".logs" / f"{name}.log"  # kept when the build fails
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"zapfarm kernel build {name} key {key}\n")
        try:
            say(f"unpacking {source.path.name} {source.package_version} ({source.origin})")
            tree = extract(source.path, work / "src")
            if patches:
                say(f"applying {len(patches)} patch(es): {', '.join(spec.patch_sets)}")
                apply_patches(tree, patches, dry_run=True)
                apply_patches(tree, patches)
            say("configuring: tinyconfig + " + " + ".join(f.name for f in fragments))
            ccache = ccache_dir(cache_dir)
            configure(tree, fragments, log, ccache=ccache)
            n_jobs = jobs or os.cpu_count() or 1
            say(f"compiling with make -j{n_jobs}" + (" and ccache" if ccache else ""))
            make_started = time.monotonic()
            steps = _compile(tree, n_jobs, log, on_step, ccache=ccache)
            make_seconds = time.monotonic() - make_started
            bzimage = tree / "arch" / "x86" / "boot" / "bzImage"
            info = inspect_bzimage(bzimage)
            release_file = tree / "include" / "config" / "kernel.release"
            release = (
                release_file.read_text().strip() if release_file.is_file() else info.release
            ) or spec.series
            place_image(bzimage, folder, "bzImage")
            place_image(tree / ".config", folder, "config")
            if (tree / "System.map").is_file():
                place_image(tree / "System.map", folder, "System.map")
            place_image(log, folder, "build.log")
            prov = provenance(
                f"linux-source-{spec.series} {source.package_version}",
                {"instrumentation": spec.instrument, "revert_fix": spec.revert_fix},
                patches, fragments, "tinyconfig", kernel_dir,
            )  # fmt: skip
            image = KernelImage(name, release, folder / "bzImage", sha256_of(folder / "bzImage"),
                                source_label, prov)  # fmt: skip
            write_manifest(
                folder,
                {
                    "name": name,
                    "release": release,
                    "path": str(image.path),
                    "sha256": image.sha256,
                    "source": source_label,
                    "key": key,
                    "series": spec.series,
                    "flags": spec.flags,
                    "package_version": source.package_version,
                    "patches": [p["name"] for p in prov["patches"]],  # type: ignore[union-attr]
                    "fragments": [f.name for f in fragments],
                    "provenance": prov,
                    "steps": steps,
                    "jobs": n_jobs,
                    "make_seconds": round(make_seconds, 1),
                    "seconds": round(time.monotonic() - started, 1),
                },
            )
        finally:
            if keep_tree:
                say(f"build tree kept in {work}")
            else:
                shutil.rmtree(work, ignore_errors=True)
    return BuildResult(
        image, key, spec, source, True, time.monotonic() - started, make_seconds, steps,
        [p.name for p in patches], folder,
    )  # fmt: skip


def _cached(folder: Path, key: str, name: str, source_label: str) -> KernelImage | None:
    manifest = read_manifest(folder)
    image = folder / "bzImage"
    if manifest is None or manifest.get("key") != key or not image.is_file():
        return None
    sha = sha256_of(image)
    if sha != manifest.get("sha256"):
        return None
    prov = manifest.get("provenance")
    return KernelImage(
        name, str(manifest.get("release", "")), image, sha, source_label,
        prov if isinstance(prov, dict) else None,
    )  # fmt: skip


def _compile(
    tree: Path,
    jobs: int,
    log: Path,
    on_step: StepCallback | None,
    out: Path | None = None,
    ccache: Path | None = None,
) -> int:
    """make bzImage, its output to the log, each build step reported as it happens."""
    steps = 0
    args = _make_cmd([*([f"O={out}"] if out is not None else []), f"-j{jobs}", "bzImage"], ccache)
    with log.open("a") as f:
        f.write(f"$ {' '.join(args)}\n")
        f.flush()
        proc = subprocess.Popen(
            args,
            cwd=tree,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env=_make_env(tree, ccache),
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            f.write(line)
            if m := _MAKE_STEP.match(line):
                steps += 1
                if on_step is not None:
                    on_step(steps, f"{m[1]} {m[2]}")
        code = proc.wait()
    if code != 0:
        raise KernelError(f"`make -j{jobs} bzImage` failed in {tree}:\n{_tail(log)}\n(log: {log})")
    return steps


# --- a developer's own tree ----------------------------------------------------------

_MAKE_VAR = re.compile(r"^(VERSION|PATCHLEVEL)\s*=\s*(\d+)\s*$", re.M)


def tree_series(tree: Path) -> str:
    """ "<VERSION>.<PATCHLEVEL>" from the top Makefile; refuses what is not a kernel tree."""
    makefile = tree / "Makefile"
    if not (makefile.is_file() and (tree / "Kconfig").is_file() and (tree / "mm").is_dir()):
        raise KernelError(
            f"{tree} is not a Linux kernel tree (no Makefile, Kconfig and mm/ at its top)"
        )
    found = dict(_MAKE_VAR.findall(makefile.read_text(errors="replace")[:4096]))
    if "VERSION" not in found or "PATCHLEVEL" not in found:
        raise KernelError(f"{makefile} names no VERSION and PATCHLEVEL: is it a kernel tree?")
    return f"{found['VERSION']}.{found['PATCHLEVEL']}"


def check_tree_clean(tree: Path) -> None:
    """Kbuild refuses O= builds from a tree configured in place; say how to fix it first."""
    dirty = [
        p
        for p in (".config", "include/config", "arch/x86/include/generated")
        if (tree / p).exists()
    ]
    if dirty:
        raise KernelError(
            f"{tree} was configured or built in place ({', '.join(dirty)}): Kbuild refuses an "
            f"out-of-tree (O=) build from it, and the farm never writes to your tree. Fix: save "
            f"your config (`cp {tree}/.config my.config`), run `make -C {tree} mrproper`, then "
            "pass `--config my.config`"
        )


def _tree_revision(tree: Path) -> str | None:
    """git HEAD of the tree, read without writing anything (no index refresh)."""
    if not (tree / ".git").exists():
        return None
    try:
        done = subprocess.run(
            ["git", "-C", str(tree), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},
        )
    except FileNotFoundError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def build_tree(
    cache_dir: Path,
    tree: Path,
    *,
    config: Path | None = None,
    jobs: int | None = None,
    progress: Progress | None = None,
    on_step: StepCallback | None = None,
    kernel_dir: Path = KERNEL_DIR,
) -> BuildResult:
    """Build a developer's own kernel tree out of tree (``make O=``) and name the image.

    The tree is only read. Its build folder is kept per tree path under
    ``cache_dir/kernels/.trees/`` so that the next build of the same tree is
    incremental. The base config is ``config`` (the developer's own) or
    tinyconfig; the farm's fragment is merged over it. The image is named
    ``tree-<folder>-<sha8>`` after the bzImage's sha256, so a changed tree
    gets a new name and an unchanged one the same.
    """
    say = progress or (lambda _msg: None)
    started = time.monotonic()
    tree = tree.resolve()
    if not tree.is_dir():
        raise KernelError(f"--tree {tree}: no such folder")
    series = tree_series(tree)
    check_tree_clean(tree)
    if config is not None and not config.is_file():
        raise KernelError(f"--config {config}: no such file")
    common = fragments_for(series, kernel_dir)
    parse_fragment(common)
    check_tools()
    tree_key = hashlib.sha256(str(tree).encode()).hexdigest()[:12]
    out = kernels_dir(cache_dir) / ".trees" / f"{tree.name}-{tree_key}"
    out.mkdir(parents=True, exist_ok=True)
    log = kernels_dir(cache_dir) / ".logs" / f"tree-{tree.name}-{tree_key}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with _locked(kernels_dir(cache_dir) / ".locks" / f"tree-{tree_key}.lock"):
        log.write_text(f"zapfarm tree build of {tree} in {out}\n")
        base = "tinyconfig"
        if config is not None:
            base = f"{config.resolve()} sha256 {sha256_of(config)}"
        say(f"configuring {tree} (linux {series}) in {out}: {base.split()[0]} + "
            + " + ".join(f.name for f in common))  # fmt: skip
        configure(tree, common, log, out=out, base=config)
        n_jobs = jobs or os.cpu_count() or 1
        say(f"compiling with make O={out} -j{n_jobs}")
        make_started = time.monotonic()
        steps = _compile(tree, n_jobs, log, on_step, out=out)
        make_seconds = time.monotonic() - make_started
        bzimage = out / "arch" / "x86" / "boot" / "bzImage"
        sha = sha256_of(bzimage)
        name = f"tree-{re.sub(r'[^A-Za-z0-9_.-]', '_', tree.name)[:40]}-{sha[:8]}"
        folder = kernels_dir(cache_dir) / name
        release_file = out / "include" / "config" / "kernel.release"
        release = release_file.read_text().strip() if release_file.is_file() else series
        revision = _tree_revision(tree)
        source = f"tree {tree}" + (f" at {revision}" if revision else "")
        prov = provenance(source, {"instrumentation": None, "revert_fix": False}, [], common,
                          base, kernel_dir)  # fmt: skip
        for path, dest in ((bzimage, "bzImage"), (out / ".config", "config"),
                           (out / "System.map", "System.map"), (log, "build.log")):  # fmt: skip
            if path.is_file():
                place_image(path, folder, dest)
        image = KernelImage(name, release, folder / "bzImage", sha, f"tree:{tree.name}"[:64], prov)
        write_manifest(
            folder,
            {
                "name": name,
                "release": release,
                "path": str(image.path),
                "sha256": sha,
                "source": image.source,
                "series": series,
                "flags": "tree",
                "steps": steps,
                "jobs": n_jobs,
                "make_seconds": round(make_seconds, 1),
                "seconds": round(time.monotonic() - started, 1),
                "provenance": prov,
            },
        )
    return BuildResult(
        image, sha, None, SourceTarball(series, revision or "tree", tree, "tree"),
        True, time.monotonic() - started, make_seconds, steps, [], folder,
    )  # fmt: skip
