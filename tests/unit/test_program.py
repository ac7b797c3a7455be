"""farm reproduce --program without a guest: building, and judging a foreign program's runs."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from farm.cli.main import main
from farm.control.program import build
from farm.protocol import TrialResult
from farm.triage.kinds import VerdictKind
from farm.triage.verdict import judge

WARN = (
    "[   12.5] zapfarm: trial t begin\n"
    "[   12.9] WARNING: CPU: 1 PID: 77 at mm/memory.c:1468 zap_pte_range+0x5c/0x900\n"
    "[   12.9] RIP: 0010:zap_pte_range+0x5c/0x900\n"
    "[   13.0] ---[ end trace 0000000000000000 ]---\n"
)
RSS = "[   14.0] BUG: Bad rss-counter state mm:00000000c0ffee00 type:MM_SHMEMPAGES val:-1\n"


def result(**fields: Any) -> TrialResult:
    now = time.time()
    base: dict[str, Any] = {
        "trial_id": "p-1", "token": "program:zap-migrate.c:0123456789ab", "kernel": "k",
        "worker": "w", "outcome": "ok", "exit_code": 0, "elapsed_ms": 100, "started_at": now,
        "finished_at": now, "output": "move_all_to_node node=0\n",
    }  # fmt: skip
    return TrialResult(**{**base, **fields})


@pytest.mark.parametrize(
    ("fields", "kind", "words"),
    [
        ({}, VerdictKind.CLEAN, "exit status 0"),
        ({"exit_code": 3}, VerdictKind.CLEAN, "exit status 3"),
        ({"console": WARN}, VerdictKind.KERNEL_REPORT, "zap_pte_range"),
        ({"console": RSS}, VerdictKind.KERNEL_REPORT, "Bad rss-counter"),
        ({"outcome": "program-error", "signal": int(signal.SIGSEGV), "exit_code": None},
         VerdictKind.PROGRAM_CRASH, "program killed by SIGSEGV"),
        ({"outcome": "program-error", "signal": int(signal.SIGABRT), "exit_code": None},
         VerdictKind.INVALID, "SIGABRT (6), not a fault signal"),
        ({"outcome": "timeout", "exit_code": None}, VerdictKind.INVALID, "never exited"),
        ({"outcome": "timeout", "exit_code": None, "elapsed_ms": None}, VerdictKind.HANG, "hang"),
        ({"outcome": "guest-died", "exit_code": None}, VerdictKind.GUEST_CRASH, "guest died"),
    ],
    ids=["clean", "exit-3", "warn", "teardown", "segv", "abort", "never-exits", "hang", "died"],
)  # fmt: skip
def test_foreign_program_oracles(fields: dict[str, Any], kind: VerdictKind, words: str) -> None:
    verdict = judge(result(**fields))
    assert verdict.kind == kind
    assert words in f"{verdict.title} {verdict.detail}"


def test_a_token_trial_is_still_judged_by_its_four_oracles() -> None:
    """Only program: tokens take the foreign path; a token without program JSON is invalid."""
    assert judge(result(token="zf1-8188e2f542964e0c")).kind == VerdictKind.INVALID


def test_build_links_libnuma_when_included(tmp_path: Path) -> None:
    source = tmp_path / "m.c"
    source.write_text(
        "#include <numaif.h>\n#include <stdio.h>\n"
        'int main(void) { printf("%ld\\n", move_pages(0, 0, 0, 0, 0, 0)); return 0; }\n'
    )
    built = build(source, tmp_path / "out")
    assert built.command[-1] == "-lnuma" and built.binary.stat().st_size > 100_000
    assert built.label == f"program:m.c:{built.sha256[:12]}"


def test_a_program_that_does_not_compile_exits_2_with_the_compilers_message(
    tmp_path: Path,
) -> None:
    source = tmp_path / "broken.c"
    source.write_text("int main(void) { return undeclared_thing; }\n")
    done = CliRunner().invoke(main, ["reproduce", "--program", str(source)])
    assert done.exit_code == 2
    assert "gcc -O2 -static -pthread" in done.output
    assert "undeclared_thing" in done.output and "undeclared" in done.output
    both = CliRunner().invoke(main, ["reproduce", "zf1-8188e2f542964e0c", "--program", str(source)])
    assert both.exit_code == 2 and "one of them" in both.output
