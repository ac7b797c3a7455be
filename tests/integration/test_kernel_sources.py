"""The kernel config fragment and patches against Debian's real linux-source tarballs.

A build takes minutes; these checks take seconds and catch what breaks one:
an option the series does not know, a patch that no longer applies after a
Debian point release. Only the files the patches touch and the Kconfig files are
unpacked, once per tarball version (kept under cache_dir/kernels/.excerpts). A series whose
tarball is not on this host is skipped, naming the command that fetches it
(`deploy/setup-host.sh test` fetches all three).
"""

from __future__ import annotations

import hashlib
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from farm.artifacts.kernelbuild import (
    INSTRUMENTS,
    PATCH_ORDER,
    BuildSpec,
    apply_patches,
    build_key,
    fragments_for,
    kconfig_symbols,
    parse_fragment,
    patches_for,
    provenance,
)
from farm.artifacts.kernels import KernelError
from farm.artifacts.sources import (
    PATCHED_FILES,
    SERIES,
    SourceTarball,
    extract,
    find_source,
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
    instrument = patch_set if patch_set in INSTRUMENTS else None
    spec = BuildSpec(series, instrument, patch_set == "revert-fix")
    apply_patches(tree, patches_for(spec), dry_run=True)


def patched_copy(tree: Path, dest: Path, spec: BuildSpec) -> dict[str, tuple[str, str]]:
    """Apply spec's patches for real to copies of PATCHED_FILES: file -> (pristine, patched)."""
    for name in PATCHED_FILES:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tree / name, dest / name)
    apply_patches(dest, patches_for(spec))
    return {name: ((tree / name).read_text(), (dest / name).read_text()) for name in PATCHED_FILES}


def zap_pte_range(source: str) -> str:
    body = source[source.index("static unsigned long zap_pte_range(") :]
    return body[: body.index("\n}\n")]


COUNTERS = ("MIGRATION_ENTRIES", "MIGRATION_SKIPPED", "SWAP_ENTRIES", "SWAP_SKIPPED")


@pytest.mark.parametrize("series", SERIES_LIST)
@pytest.mark.parametrize("revert_fix", [False, True], ids=["fixed", "revertfix"])
def test_count_patch_applies_and_counts(
    excerpts: dict[str, Path | str], series: str, revert_fix: bool, tmp_path: Path
) -> None:
    """The same count patch on the fixed and the fix-reverted source (--fuzz=0).

    The four events are declared and named in the same order, the entry is noted
    where zap_pte_range() first looks at it and judged at the end of its turn
    (the loop condition), after every path through the body, the skip included.
    """
    tree = tree_for(excerpts, series)
    files = patched_copy(tree, tmp_path, BuildSpec(series, "count", revert_fix))
    for name, (pristine, patched) in files.items():
        assert patched != pristine, f"{name} untouched"
    enum = files["include/linux/vm_event_item.h"][1]
    names = [f"ZAPFARM_{c}" for c in COUNTERS]
    at = [enum.index(f"{n},") for n in names]
    assert at == sorted(at) and at[-1] < enum.index("NR_VM_EVENT_ITEMS")
    text = files["mm/vmstat.c"][1]
    at = [text.index(f'"zapfarm_{c.lower()}",') for c in COUNTERS]
    assert at == sorted(at)
    assert text.index('"zapfarm_swap_skipped",') < text.index(
        "#endif /* CONFIG_VM_EVENT_COUNTERS || CONFIG_MEMCG */"
    )
    body = zap_pte_range(files["mm/memory.c"][1])
    meet = body.index("zapfarm_kind = zapfarm_window_meet(details, entry);")
    assert body.index("entry = pte_to_swp_entry(ptent);") < meet
    done = body.index("} while (zapfarm_window_done(&zapfarm_kind, details, pte,")
    if revert_fix:
        assert meet < body.index("zapfarm --revert-fix") < done
    else:
        assert "zapfarm --revert-fix" not in body
    added = [
        line
        for patch in patches_for(BuildSpec(series, "count"))
        for line in patch.read_text().splitlines()
        if line.startswith("+") and not line.startswith("+++")
    ]
    assert not [line for line in added if re.search(r"WARN|BUG|taint|printk|pr_", line)]


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


# --- a developer's own patches (farm kernels build --patch) ---------------------------

USER_PATCH = (
    Path(__file__).parents[1] / "data" / "patches" / "0001-shmem-example-user-patch-6.1.patch"
)


@pytest.fixture(scope="module")
def mm_61(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mm/memory.c and mm/shmem.c of the real linux-source-6.1 tarball (only those two)."""
    tarball = find_source(load_settings().cache_dir, "6.1")
    if tarball is None:
        pytest.skip("linux-source-6.1 is not here: apt-get install linux-source-6.1")
    return extract(
        tarball.path,
        tmp_path_factory.mktemp("src61"),
        ["linux-source-6.1/mm/memory.c", "linux-source-6.1/mm/shmem.c"],
    )


def copy_mm(src: Path, dest: Path) -> Path:
    shutil.copytree(src / "mm", dest / "mm")
    return dest


def test_user_patch_applies_after_the_farm_patches(mm_61: Path, tmp_path: Path) -> None:
    """--instrument warn --revert-fix --patch FILE: the farm's patches, then the user's."""
    tree = copy_mm(mm_61, tmp_path)
    spec = BuildSpec("6.1", "warn", True, (USER_PATCH,))
    patches = patches_for(spec)
    assert [p.parent.parent.name for p in patches[:2]] == ["revert-fix", "warn"]
    assert patches[-1] == USER_PATCH.resolve()
    apply_patches(tree, patches, dry_run=True)
    apply_patches(tree, patches)
    assert 'pr_info("zapfarm: example user patch applied\\n");' in (tree / "mm/shmem.c").read_text()
    assert "zapfarm --instrument warn" in (tree / "mm/memory.c").read_text()
    assert spec.flags == "warn-revertfix-patched"
    # provenance: every patch in order, with the sha256 of its file and whose it is
    prov = provenance("linux-source-6.1 x", {"instrumentation": "warn"}, patches,
                      fragments_for("6.1"), "tinyconfig")  # fmt: skip
    listed = prov["patches"]
    assert isinstance(listed, list)
    assert [p["origin"] for p in listed] == ["farm", "farm", "user"]
    assert listed[-1] == {
        "name": USER_PATCH.name,
        "sha256": hashlib.sha256(USER_PATCH.read_bytes()).hexdigest(),
        "origin": "user",
    }
    assert listed[0]["name"].startswith("patches/revert-fix/6.1/")
    # and the user's patch moves the build key: another patch never reuses the image
    other = tmp_path / "other.patch"
    other.write_text(USER_PATCH.read_text().replace("example user patch", "another patch"))
    key = build_key("6.1.192-3", spec, fragments_for("6.1"), patches)
    spec2 = BuildSpec("6.1", "warn", True, (other,))
    assert key != build_key("6.1.192-3", spec2, fragments_for("6.1"), patches_for(spec2))


def test_broken_user_patch_names_file_hunk_and_fix(mm_61: Path, tmp_path: Path) -> None:
    tree = copy_mm(mm_61, tmp_path / "tree")
    broken = tmp_path / "0002-stale.patch"
    broken.write_text(
        USER_PATCH.read_text()
        .replace("@@ -4089,6 +4089,8 @@", "@@ -4089,6 +4089,9 @@")
        .replace("\t\tgoto out2;\n", "\t\tgoto out_somewhere_else;\n")
        .replace('+\tpr_info("zapfarm', '+\t/* stale */\n+\tpr_info("zapfarm')
    )
    before = (tree / "mm/shmem.c").read_bytes()
    patches = [*patches_for(BuildSpec("6.1", "warn")), USER_PATCH, broken]
    with pytest.raises(KernelError) as caught:
        apply_patches(tree, patches)
    message = str(caught.value)
    assert str(broken) in message
    assert "hunk #1 of mm/shmem.c (at line 4089) does not apply" in message
    assert "after 0001-zap_pte_range-warn-on-migration-entry-with-details.patch, " in message
    assert f"{tree.name} as it stands after 0001-zap" in message
    assert "Fix: rebase the patch onto" in message
    # the ones before it did apply; the broken one changed nothing
    assert (tree / "mm/shmem.c").read_bytes() != before  # USER_PATCH applied
    assert "stale" not in (tree / "mm/shmem.c").read_text()


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("this is not a diff\n", "it holds no unified diff"),
        (None, "already in the tree"),  # the same patch twice
    ],
    ids=["garbage", "applied-twice"],
)
def test_user_patch_errors_say_why(mm_61: Path, tmp_path: Path, text: str | None, why: str) -> None:
    tree = copy_mm(mm_61, tmp_path / "tree")
    bad = tmp_path / "bad.patch"
    bad.write_text(text if text is not None else USER_PATCH.read_text())
    patches = [bad] if text is not None else [USER_PATCH, bad]
    with pytest.raises(KernelError, match=why):
        apply_patches(tree, patches)
