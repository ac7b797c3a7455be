"""farm export: a standalone reproducer that builds with its printed gcc line and runs here.

This host has one NUMA node, so the program and run.sh must refuse to run with
a clear "needs two NUMA nodes"; run.sh's judging of real-looking outputs is
checked through its --judge mode. The same program in a real two-node guest is
tests/integration/test_standalone_vm.py.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from farm.artifacts.standalone import NEEDS_NODES
from farm.cli.main import main
from farm.params import SeedToken

TOKEN = "zf2-8188e2f542964e0c~pages=512,rounds=1"
NODES = len(list(Path("/sys/devices/system/node").glob("node[0-9]*")))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("export") / "repro"
    done = CliRunner().invoke(main, ["export", TOKEN, "--out", str(out)])
    assert done.exit_code == 0, done.output
    build = done.stdout.strip().splitlines()[-1]
    return out, build


def test_builds_with_the_printed_gcc_line(exported: tuple[Path, str]) -> None:
    out, build = exported
    assert build == f"cd {out} && gcc -O2 -static -pthread -o zapmigrate-repro reproducer.c"
    done = subprocess.run(build, shell=True, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert (out / "zapmigrate-repro").stat().st_size > 100_000  # static
    assert "README.md" in {p.name for p in out.iterdir()}


def test_parameters_are_the_tokens_with_comments(exported: tuple[Path, str]) -> None:
    out, _ = exported
    source = (out / "reproducer.c").read_text()
    block = source[source.index("token_argv[] = {") : source.index("};")]
    baked = re.findall(r'"([^"]*)"', block)
    assert baked == SeedToken.parse(TOKEN).params().argv()
    assert '"--pages", "512",' in block and "/* buffer size in pages */" in block
    assert TOKEN in source


@pytest.mark.skipif(NODES >= 2, reason="this host has two NUMA nodes")
def test_one_numa_node_is_refused_clearly(exported: tuple[Path, str]) -> None:
    out, build = exported
    subprocess.run(build, shell=True, check=True, capture_output=True)
    for cmd in (["./zapmigrate-repro"], ["./run.sh"]):
        done = subprocess.run(cmd, cwd=out, capture_output=True, text=True, check=False)
        assert done.returncode == 2, (cmd, done.stdout, done.stderr)
        assert f"{NEEDS_NODES}, this machine has {NODES}" in done.stderr
        assert done.stdout == ""  # nothing ran


def output(vma_rss: int, before: int, punched: int, nodes: int = 2) -> str:
    return (
        '{"program": "zapmigrate", "format": 1, "inputs": {"pages": 512}, "kernel": "6.1.0", '
        f'"numa_nodes": {nodes}, "page_size": 4096, "migrate": {{"calls": 9, "moved": 512}}, '
        f'"vma": {{"found": true, "rss_kb": {vma_rss}, "pss_shmem_kb": {vma_rss}}}, '
        '"rollup": {"pss_shmem_kb": 696}, '
        f'"rss_shmem_kb": {{"before": {before}, "populated": 2048, "punched": {punched}}}, '
        '"timing_us": {}, "error": null}\n'
    )


@pytest.mark.parametrize(
    ("program", "klog", "code", "words"),
    [
        (output(0, 0, 0), "[ 9.1] random: crng init\n", 0, ["VMA oracle: ok", "did not show"]),
        (output(8, 0, 0), "", 1, ["VMA oracle: AFFECTED", "(Rss 8 kB, Pss_Shmem 8 kB; want 0)"]),
        (output(0, 0, 8), "", 1, ["counter oracle: AFFECTED, RssShmem is 8 kB after"]),
        (
            output(0, 0, 0),
            "BUG: Bad rss-counter state mm:00000000 type:MM_SHMEMPAGES val:-2\n",
            1,
            ["teardown oracle: AFFECTED", "    BUG: Bad rss-counter", "splat oracle: ok"],
        ),
        (
            output(0, 0, 0),
            "WARNING: CPU: 1 PID: 9 at mm/memory.c:1468 zap_pte_range+0x5c/0x900\n",
            1,
            ["splat oracle: AFFECTED", "zap_pte_range", "this kernel is affected"],
        ),
        (output(0, 0, 0, nodes=1), "", 2, [f"1 NUMA node(s): {NEEDS_NODES}"]),
        ("segfault\n", "", 2, ["no result from the program"]),
    ],
    ids=["clean", "vma", "counter", "teardown", "splat", "one-node", "no-output"],
)
def test_run_sh_reports_oracles_in_plain_words(
    exported: tuple[Path, str], tmp_path: Path, program: str, klog: str, code: int, words: list[str]
) -> None:
    out, _ = exported
    (tmp_path / "out.json").write_text(program)
    (tmp_path / "klog").write_text(klog)
    done = subprocess.run(
        ["./run.sh", "--judge", str(tmp_path / "out.json"), str(tmp_path / "klog")],
        cwd=out, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == code, done.stdout + done.stderr
    for w in words:
        assert w in done.stdout, done.stdout


def test_refuses_a_folder_in_use_and_a_bad_token(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    done = CliRunner().invoke(main, ["export", TOKEN, "--out", str(tmp_path)])
    assert done.exit_code == 2 and "not an empty folder" in done.output
    done = CliRunner().invoke(main, ["export", "zf9-nonsense", "--out", str(tmp_path / "x")])
    assert done.exit_code == 2 and not (tmp_path / "x").exists()


def test_kernel_option_puts_that_image_in_the_vm_command(tmp_path: Path) -> None:
    from farm.store import db

    url = f"sqlite:///{tmp_path / 'farm.sqlite'}"
    db.upgrade(url)
    engine = db.make_engine(url)
    with db.session_factory(engine).begin() as session:
        db.ensure_kernel(session, "build-6.1-warn-1234abcd", "6.1.192", "/srv/k/bzImage",
                         "b" * 64, "build:linux-source-6.1")  # fmt: skip
    engine.dispose()
    env = {"FARM_DATABASE_URL": url}
    out = tmp_path / "r"
    done = CliRunner().invoke(
        main, ["export", TOKEN, "--kernel", "build-6.1-warn-1234abcd", "--out", str(out)], env=env
    )
    assert done.exit_code == 0, done.output
    readme = (out / "README.md").read_text()
    assert "-kernel /srv/k/bzImage -initrd repro.cpio.gz" in readme
    assert "exported for kernel `build-6.1-warn-1234abcd` (6.1.192)" in readme
    unknown = CliRunner().invoke(
        main, ["export", TOKEN, "--kernel", "nope", "--out", str(tmp_path / "x")], env=env
    )
    assert unknown.exit_code == 2 and "known: build-6.1-warn-1234abcd" in unknown.output
