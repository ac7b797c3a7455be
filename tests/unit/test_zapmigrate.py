"""guest/zapmigrate.c, compiled and run natively on this host.

The host has one NUMA node, so every move to the second node fails with
ENODEV: the program must count that, still punch every page, read the VMA
oracle and print one JSON object. Running a copy from /dev/shm reproduces
the seed program's false positive: smaps_rollup counts the binary's own
tmpfs pages, while the memfd mapping's own smaps entry reads 0.
"""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from farm.artifacts.guest_image import GUEST_DIR, compile_static
from farm.params import TrialParams
from farm.protocol import parse_program_output

HOST_NODES = len(list(Path("/sys/devices/system/node").glob("node[0-9]*")))
pytestmark = pytest.mark.skipif(HOST_NODES != 1, reason="expects a single-NUMA-node host")


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("zapmigrate") / "zapmigrate"
    compile_static(GUEST_DIR / "zapmigrate.c", out)
    return out


def params(**overrides: Any) -> TrialParams:
    values: dict[str, Any] = {
        "pages": 256,
        "evict_delay_min_us": 0,
        "evict_delay_max_us": 20,
        "kick_delay_us": 2,
        "batch": 4,
        "src_node": 0,
        "dst_node": 1,
        "rounds": 2,
        "punch": "fallocate",
        "evictors": 2,
        "placement": "split",
        "rng_seed": 12345,
    }
    return TrialParams(**(values | overrides))


def run(binary: Path, argv: list[str]) -> tuple[int, dict[str, Any]]:
    done = subprocess.run([str(binary), *argv], capture_output=True, text=True, timeout=30)
    assert done.stdout.count("\n") == 1, done.stdout  # exactly one JSON line
    return done.returncode, json.loads(done.stdout)


@pytest.mark.parametrize("punch", ["fallocate", "madvise"])
@pytest.mark.parametrize("placement", ["any", "same", "split"])
def test_single_node_trial_counts_failures_and_oracle_reads_zero(
    program: Path, punch: str, placement: str
) -> None:
    p = params(punch=punch, placement=placement)
    code, out = run(program, p.argv())
    assert code == 0
    parse_program_output(json.dumps(out))  # the control plane's own schema accepts it
    program_knobs = {k: v for k, v in p.to_dict().items() if k not in p.vm_knobs()}
    assert out["inputs"] == program_knobs  # VM-level knobs are the worker's, not the program's
    assert out["numa_nodes"] == 1
    assert out["error"] == "numa: 1 node"
    assert out["page_size"] > 0

    m = out["migrate"]
    batches = -(-p.pages // p.batch)
    assert m["calls"] == 2 * batches * p.rounds  # move-all plus the raced moves, per round
    # Round 0 moves to node 0 (works) then to node 1 (ENODEV); round 1 the other way round.
    assert m["call_errors"] == batches * p.rounds
    assert m["other_errnos"][str(errno.ENODEV)] == m["call_errors"]
    assert m["moved"] >= p.pages  # everything reached node 0 before the first race

    assert out["punch"]["errors"] == 0
    assert out["punch"]["calls"] >= batches * p.rounds
    assert out["vma"] == {"found": True, "rss_kb": 0, "pss_shmem_kb": 0}
    rss = out["rss_shmem_kb"]
    page_kb = out["page_size"] // 1024
    assert rss["populated"] - rss["before"] == p.pages * page_kb
    assert rss["punched"] == rss["before"]
    assert {"populate", "migrate", "sweep", "total"} <= set(out["timing_us"])


def test_run_from_tmpfs_shows_the_rollup_false_positive(program: Path) -> None:
    copy = Path("/dev/shm") / f"zapmigrate-test-{uuid.uuid4().hex[:8]}"
    shutil.copy2(program, copy)
    try:
        code, out = run(copy, params(pages=64, rounds=1, punch="madvise").argv())
    finally:
        copy.unlink()
    assert code == 0
    assert out["vma"] == {"found": True, "rss_kb": 0, "pss_shmem_kb": 0}
    assert out["rollup"]["pss_shmem_kb"] > 0  # the binary's own tmpfs pages
    assert out["rss_shmem_kb"]["punched"] == out["rss_shmem_kb"]["before"]


def test_batch_larger_than_buffer_and_one_evictor(program: Path) -> None:
    p = params(pages=10, batch=64, evictors=1, rounds=3, placement="any")
    code, out = run(program, p.argv())
    assert code == 0
    assert out["migrate"]["calls"] == 2 * p.rounds
    assert out["vma"]["rss_kb"] == 0


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["--bogus", "1"], "unknown flag '--bogus'"),
        (["--pages"], "--pages needs a value"),
        (["--pages", "12x"], "--pages '12x' is not an integer"),
        (["--pages", "0"], "--pages '0' is not an integer in [1, 65536]"),
        (["--pages", "-5"], "--pages '-5' is not an integer"),
        (["--punch", "truncate"], "--punch 'truncate' is not one of fallocate|madvise"),
        (["--placement", "far"], "--placement 'far' is not one of any|same|split"),
        (["--pages", "1", "--pages", "2"], "--pages given twice"),
        ([], "missing --pages"),
    ],
)
def test_bad_flags_give_error_json_and_exit_2(
    program: Path, argv: list[str], complaint: str
) -> None:
    code, out = run(program, argv)
    assert code == 2
    assert out["program"] == "zapmigrate"
    assert complaint in out["error"]
    parse_program_output(json.dumps(out))


def test_inconsistent_flags_are_refused(program: Path) -> None:
    argv = params().argv()
    swapped = argv[:]
    swapped[swapped.index("--dst-node") + 1] = "0"
    code, out = run(program, swapped)
    assert (code, out["error"]) == (2, "usage: --src-node and --dst-node must differ")
    delays = argv[:]
    delays[delays.index("--evict-delay-min-us") + 1] = "50"
    code, out = run(program, delays)
    assert code == 2
    assert "--evict-delay-min-us is above --evict-delay-max-us" in out["error"]
