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
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from farm.artifacts.guest_image import GUEST_DIR, compile_static
from farm.params import MOVERS, SCENARIOS, SWAPPED_SCENARIOS, TrialParams
from farm.protocol import TrialResult, parse_program_output
from farm.triage.verdict import Verdict, judge

NUMA_SYSCTL = "/proc/sys/kernel/numa_balancing"

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

    assert out["punch"]["errors"] == 0 and out["punch"]["unpunched"] == 0
    assert out["punch"]["calls"] >= batches * p.rounds
    assert out["warnings"] == []  # the per-CPU counter fold pinned itself to every CPU
    assert out["vma"] == {"found": True, "rss_kb": 0, "pss_shmem_kb": 0, "anon_kb": 0, "swap_kb": 0}
    rss = out["rss_shmem_kb"]
    page_kb = out["page_size"] // 1024
    assert rss["populated"] - rss["before"] == p.pages * page_kb
    assert rss["punched"] == rss["before"]
    assert {"populate", "migrate", "check", "total"} <= set(out["timing_us"])
    # the data oracle ran although nothing could move: every punched page read zero
    assert out["data"] == {"checked": p.pages * p.rounds, "mismatches": 0, "first": []}


def test_run_from_tmpfs_shows_the_rollup_false_positive(program: Path) -> None:
    copy = Path("/dev/shm") / f"zapmigrate-test-{uuid.uuid4().hex[:8]}"
    shutil.copy2(program, copy)
    try:
        code, out = run(copy, params(pages=64, rounds=1, punch="madvise").argv())
    finally:
        copy.unlink()
    assert code == 0
    assert out["vma"] == {"found": True, "rss_kb": 0, "pss_shmem_kb": 0, "anon_kb": 0, "swap_kb": 0}
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
        (["--scenario", "punch"], "--scenario 'punch' is not one of shared-punch|shared-truncate"),
        (["--mover", "hand"], "--mover 'hand' is not one of move_pages|mbind|numa-balancing"),
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


# ---- scenarios, movers and the data oracle --------------------------------------------

RACED = [s for s in SCENARIOS if s not in SWAPPED_SCENARIOS]
HOST_SWAP_KB = sum(
    int(line.split()[2]) for line in Path("/proc/swaps").read_text().splitlines()[1:] if line
)


def judged(out: dict[str, Any]) -> Verdict:
    """The control plane's verdict of this native run's JSON, as a worker would report it."""
    now = time.time()
    return judge(
        TrialResult(
            trial_id="t-native",
            token="zf3-0000000000000001",
            kernel="host",
            worker="native",
            outcome="ok",
            program=parse_program_output(json.dumps(out)),
            started_at=now,
            finished_at=now,
        )
    )


@pytest.mark.parametrize("mover", MOVERS)
@pytest.mark.parametrize("scenario", RACED)
def test_each_scenario_checks_every_page_and_reads_what_posix_requires(
    program: Path, scenario: str, mover: str
) -> None:
    p = params(scenario=scenario, mover=mover, pages=128)
    code, out = run(program, p.argv())
    assert code == 0
    assert out["inputs"]["scenario"] == scenario and out["inputs"]["mover"] == mover
    assert out["error"] == "numa: 1 node"
    phases = 2 if "truncate" in scenario else 1  # truncated (SIGBUS), then extended (zeros)
    assert out["data"] == {"checked": p.pages * p.rounds * phases, "mismatches": 0, "first": []}
    vma = out["vma"]
    cows = p.pages // 2 if scenario.startswith("private") else 0  # every other page COWed
    page_kb = out["page_size"] // 1024
    # a hole punch keeps private COWs; a truncation discards them
    assert vma["anon_kb"] == (cows * page_kb if scenario == "private-punch" else 0)
    assert vma["rss_kb"] - vma["anon_kb"] == 0  # no page of the file stays mapped
    assert out["rss_shmem_kb"]["punched"] == out["rss_shmem_kb"]["before"]
    assert out["punch"]["errors"] == 0
    proxy = out["proxy"]
    assert proxy["moved"] + proxy["gone"] <= proxy["overlapped"] <= p.pages * p.rounds
    # numa-balancing: the sysctl exists here, and a one-node host is never switched on
    assert out["numa_balancing"] == (
        None if mover != "numa-balancing" else int(Path(NUMA_SYSCTL).read_text())
    )
    if mover == "mbind":
        assert out["migrate"]["other_errnos"].get(str(errno.EINVAL), 0) > 0  # MPOL_BIND to node 1
    # one node: the data checked out, but the race never ran, so the trial is invalid
    verdict = judged(out)
    assert verdict.kind == "invalid" and "1 NUMA node" in (verdict.detail or "")


@pytest.mark.parametrize(
    ("scenario", "page", "phase", "want"),
    [
        ("shared-punch", 5, "zapped", "zero"),
        ("shared-truncate", 5, "extended", "zero"),
        ("private-truncate", 6, "extended", "zero"),
        ("private-punch", 6, "zapped", "cow"),  # an even page: COWed, must keep its data
        ("private-punch", 7, "zapped", "zero"),  # an odd page: the file's, punched
    ],
)
def test_the_data_oracle_detects_a_wrong_page(
    program: Path, scenario: str, page: int, phase: str, want: str
) -> None:
    """--corrupt-page writes the file's old data back into one page before the last check."""
    p = params(scenario=scenario, pages=64, rounds=2)
    code, out = run(program, [*p.argv(), "--corrupt-page", str(page)])
    assert code == 0
    data = out["data"]
    assert data["mismatches"] == 1
    assert data["first"] == [
        {
            "page": page,
            "round": 1,
            "phase": phase,
            "want": want,
            "got": "file",
            "word": data["first"][0]["word"],
        }
    ]
    assert int(data["first"][0]["word"], 16) != 0
    verdict = judged(out)  # damage outranks the single node: the kernel answered a read
    assert verdict.kind == "data-mismatch" and verdict.is_finding
    assert verdict.title is not None and verdict.title.endswith(f"({scenario})")
    assert f"page {page} round 1 {phase}: read file" in (verdict.detail or "")


def test_corrupt_page_must_be_inside_the_buffer(program: Path) -> None:
    code, out = run(program, [*params(pages=64).argv(), "--corrupt-page", "64"])
    assert (code, out["error"]) == (2, "usage: --corrupt-page must be below --pages")


@pytest.mark.skipif(HOST_SWAP_KB > 0, reason="the host has swap: the no-swap path is not reachable")
@pytest.mark.parametrize("scenario", sorted(SWAPPED_SCENARIOS))
def test_swapped_scenarios_without_swap_are_invalid_with_the_reason(
    program: Path, scenario: str
) -> None:
    code, out = run(program, params(scenario=scenario).argv())
    assert code == 0
    assert out["swap"] == {"total_kb": 0, "paged_out_kb": None}
    assert "swap: no active swap" in out["error"]
    assert out["data"]["checked"] == 0
    verdict = judged(out)
    assert verdict.kind == "invalid" and "swap: no active swap" in (verdict.detail or "")


@pytest.mark.skipif(HOST_SWAP_KB == 0, reason="the host has no swap (/proc/swaps is empty)")
@pytest.mark.parametrize("scenario", sorted(SWAPPED_SCENARIOS))
def test_swapped_scenarios_page_out_and_check(program: Path, scenario: str) -> None:
    p = params(scenario=scenario, pages=128)
    code, out = run(program, p.argv())
    assert code == 0
    assert out["swap"]["paged_out_kb"] > 0
    phases = 2 if "truncate" in scenario else 1
    assert out["data"] == {"checked": p.pages * p.rounds * phases, "mismatches": 0, "first": []}
