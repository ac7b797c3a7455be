"""The kernel config fragment and patches against Debian's real linux-source tarballs.

A build takes minutes; these checks take seconds and catch what breaks one:
an option the series does not know, a patch that no longer applies after a
Debian point release. Only mm/memory.c and the Kconfig files are unpacked, once
per tarball version (kept under cache_dir/kernels/.excerpts). A series whose
tarball is not on this host is skipped, naming the command that fetches it
(`deploy/setup-host.sh test` fetches all three).
"""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from farm.artifacts.kernelbuild import (
    PATCH_ORDER,
    SERIES,
    BuildSpec,
    SourceTarball,
    apply_patches,
    find_source,
    fragments_for,
    kconfig_symbols,
    parse_fragment,
    patches_for,
    source_excerpt,
)
from farm.settings import load_settings

SERIES_LIST = sorted(SERIES, key=lambda s: tuple(int(n) for n in s.split(".")))


@pytest.fixture(scope="module")
def excerpts() -> dict[str, Path | str]:
    """series -> excerpt tree, or the reason it is not available; unpacked in parallel."""
    cache_dir = load_settings().cache_dir
    found: dict[str, SourceTarball] = {}
    out: dict[str, Path | str] = {}
    for series in SERIES_LIST:
        tarball = find_source(cache_dir, series)
        if tarball is None:
            out[series] = (
                f"linux-source-{series} is not on this host: fetch it with "
                f"`farm kernels source {series}` (deploy/setup-host.sh test does)"
            )
        else:
            found[series] = tarball
    with ThreadPoolExecutor(max_workers=3) as pool:
        trees = pool.map(lambda t: source_excerpt(cache_dir, t), found.values())
        out.update(zip(found, trees, strict=True))
    return out


def tree_for(excerpts: dict[str, Path | str], series: str) -> Path:
    tree = excerpts[series]
    if isinstance(tree, str):
        pytest.skip(tree)
    return tree


def test_bookworm_source_is_here(excerpts: dict[str, Path | str]) -> None:
    """6.1 is the host's own series: its source must be here (apt-get install linux-source-6.1)."""
    assert isinstance(excerpts["6.1"], Path), excerpts["6.1"]


@pytest.mark.parametrize("series", SERIES_LIST)
def test_fragment_options_exist(excerpts: dict[str, Path | str], series: str) -> None:
    tree = tree_for(excerpts, series)
    known = kconfig_symbols(tree)
    assert len(known) > 5000  # the whole Kconfig tree was unpacked
    wanted = parse_fragment(fragments_for(series))
    unknown = sorted(set(wanted) - known)
    assert not unknown, f"options unknown to linux-source-{series}: {unknown}"


@pytest.mark.parametrize("series", SERIES_LIST)
@pytest.mark.parametrize("patch_set", PATCH_ORDER)
def test_each_patch_applies_alone(
    excerpts: dict[str, Path | str], series: str, patch_set: str
) -> None:
    tree = tree_for(excerpts, series)
    spec = BuildSpec(series, "warn" if patch_set == "warn" else None, patch_set == "revert-fix")
    apply_patches(tree, patches_for(spec), dry_run=True)


@pytest.mark.parametrize("series", SERIES_LIST)
def test_patches_stack_and_do_what_they_say(
    excerpts: dict[str, Path | str], series: str, tmp_path: Path
) -> None:
    """revert-fix then warn, applied for real to a copy of mm/memory.c."""
    tree = tree_for(excerpts, series)
    (tmp_path / "mm").mkdir()
    pristine = (tree / "mm" / "memory.c").read_text()
    shutil.copyfile(tree / "mm" / "memory.c", tmp_path / "mm" / "memory.c")
    apply_patches(tmp_path, patches_for(BuildSpec(series, "warn", revert_fix=True)))
    patched = (tmp_path / "mm" / "memory.c").read_text()
    added = patched.count("\n") - pristine.count("\n")
    assert 10 < added < 40
    body = patched[patched.index("static unsigned long zap_pte_range(") :]
    body = body[: body.index("\n}\n")]
    warn = body.index("WARN_ON_ONCE(details && ")
    assert "is_migration_entry(entry));" in body[warn : warn + 200]
    skip = body.index("zapfarm --revert-fix")
    assert "continue;" in body[skip : skip + 800]
    assert body.index("entry = pte_to_swp_entry(ptent);") < warn < skip
