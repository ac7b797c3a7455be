"""One verdict per kind, from captured console fixtures (tests/data/console) and oracle data."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from farm.protocol import DataCheck, TrialResult
from farm.triage.verdict import FINDING_KINDS, KINDS, judge
from workers.synthetic import synthetic_result

CONSOLES = Path(__file__).parents[1] / "data" / "console"


def console(name: str) -> str:
    """A fixture's log: everything after its header block."""
    text = (CONSOLES / name).read_text(errors="replace")
    return text.split("\n\n", 1)[1]


def clean_result(**update: object) -> TrialResult:
    message = {
        "trial_id": "t-1",
        "token": "zf2-8188e2f542964e0c~pages=512",
        "kernel": {"name": "k"},
    }
    return synthetic_result(message, "w").model_copy(update=update)


def with_program(**changes: dict[str, object]) -> TrialResult:
    base = clean_result()
    program = base.program.model_copy(
        update={k: getattr(base.program, k).model_copy(update=v) for k, v in changes.items()}
    )
    return base.model_copy(update={"program": program})


def test_clean_trial_with_its_markers_is_clean() -> None:
    verdict = judge(clean_result(console=console("zapfarm-clean")))
    assert verdict.kind == "clean" and verdict.title is None and not verdict.is_finding


@pytest.mark.parametrize(
    ("fixture", "title"),
    [
        ("zapfarm-rss-counter-type", "BUG: Bad rss-counter state"),
        ("zapfarm-rss-counter-idx", "BUG: Bad rss-counter state"),
        ("zapfarm-warn-noorc", "WARNING in zap_pte_range"),
        ("zapfarm-warn-new-format", "WARNING in zap_pte_range"),
        ("zapfarm-bad-page-map", "BUG: Bad page map"),
        # captured from the positive-control kernel: zap_pte_range() inlined
        ("zapfarm-real-warn-inlined", "WARNING in unmap_page_range"),
    ],
)
def test_kernel_reports(fixture: str, title: str) -> None:
    verdict = judge(clean_result(console=console(fixture)))
    assert (verdict.kind, verdict.title) == ("kernel-report", title)
    assert verdict.is_finding


def test_a_panic_is_a_guest_crash() -> None:
    verdict = judge(clean_result(console=console("zapfarm-panic-kill-init")))
    assert verdict.kind == "guest-crash"
    assert verdict.title == "kernel panic: Attempted to kill init!"


def test_a_guest_that_died_silently_is_a_crash_too() -> None:
    verdict = judge(clean_result(outcome="guest-died", program=None, console=""))
    assert (verdict.kind, verdict.title) == ("guest-crash", "guest died")


def test_no_answer_by_the_deadline_is_a_hang() -> None:
    verdict = judge(clean_result(outcome="timeout", program=None, console=console("zapfarm-clean")))
    assert verdict.kind == "hang" and verdict.is_finding


def test_vma_oracle() -> None:
    verdict = judge(with_program(vma={"rss_kb": 8, "pss_shmem_kb": 8}))
    assert verdict.kind == "smaps-mismatch" and "Rss 8 kB" in (verdict.detail or "")


def test_counter_oracle() -> None:
    verdict = judge(with_program(rss_shmem_kb={"before": 836, "punched": 840}))
    assert verdict.kind == "counter-mismatch" and "836 kB before" in (verdict.detail or "")


def test_the_rollup_total_alone_is_not_a_finding() -> None:
    """The seed's false positive: the binary on tmpfs shows in smaps_rollup, not in the VMA."""
    assert judge(with_program(rollup={"pss_shmem_kb": 696})).kind == "clean"


@pytest.mark.parametrize(
    "result",
    [
        clean_result(outcome="invalid-guest", program=None, error="1 node"),
        clean_result(outcome="program-error", program=None, error="not JSON"),
    ],
)
def test_invalid(result: TrialResult) -> None:
    assert judge(result).kind == "invalid"


def test_single_node_program_output_is_invalid_not_clean() -> None:
    base = clean_result()
    one_node = base.program.model_copy(update={"numa_nodes": 1, "error": "numa: 1 node"})
    assert judge(base.model_copy(update={"program": one_node})).kind == "invalid"


def test_infra_errors_are_never_findings() -> None:
    verdict = judge(clean_result(outcome="infra-error", program=None, error="boot failed"))
    assert verdict.kind == "infra-error" and not verdict.is_finding


def test_kinds_are_ordered_and_findings_are_a_subset() -> None:
    assert KINDS[0] == "infra-error" and KINDS[-1] == "clean"
    assert set(KINDS) > FINDING_KINDS


def with_data(
    scenario: str, mismatches: list[dict[str, object]], *, numa_nodes: int = 2, **top: object
) -> TrialResult:
    base = clean_result()
    inputs = {**base.program.inputs, "scenario": scenario}
    data = DataCheck(checked=1024, mismatches=len(mismatches), first=mismatches)
    program = base.program.model_copy(
        update={"inputs": inputs, "data": data, "numa_nodes": numa_nodes, **top}
    )
    return base.model_copy(update={"program": program})


def page(page: int, phase: str, want: str, got: str) -> dict[str, object]:
    return {"page": page, "round": 0, "phase": phase, "want": want, "got": got, "word": "0" * 16}


@pytest.mark.parametrize(
    ("scenario", "first", "title"),
    [
        (
            "private-truncate",
            page(4, "truncated", "sigbus", "cow"),
            "data: private COW page survives truncate (private-truncate)",
        ),
        (
            "swapped-private-truncate",
            page(2, "extended", "zero", "cow"),
            "data: private COW page survives truncate (swapped-private-truncate)",
        ),
        (
            "private-punch",
            page(0, "zapped", "cow", "zero"),
            "data: private COW page lost by hole punch (private-punch)",
        ),
        (
            "shared-punch",
            page(9, "zapped", "zero", "file"),
            "data: page keeps its data after hole punch (shared-punch)",
        ),
        (
            "shared-truncate",
            page(9, "extended", "zero", "sigsegv"),
            "data: page reads sigsegv where zero is due after truncate (shared-truncate)",
        ),
    ],
)
def test_data_oracle_titles_name_the_damage_and_the_scenario(
    scenario: str, first: dict[str, object], title: str
) -> None:
    verdict = judge(with_data(scenario, [first, page(11, "zapped", "zero", "other")]))
    assert (verdict.kind, verdict.title) == ("data-mismatch", title)
    assert verdict.is_finding
    assert verdict.detail is not None and "2 of 1024 page reads wrong" in verdict.detail
    assert f"page {first['page']} round 0 {first['phase']}: read {first['got']}" in verdict.detail


def test_a_data_mismatch_outranks_one_node_and_the_smaps_oracle() -> None:
    damaged = with_data(
        "swapped-private-truncate",
        [page(0, "truncated", "sigbus", "cow")],
        numa_nodes=1,
        error="numa: 1 node",
    )
    assert judge(damaged).kind == "data-mismatch"
    vma_too = damaged.program.vma.model_copy(update={"rss_kb": 8, "pss_shmem_kb": 8})
    both = damaged.model_copy(
        update={"program": damaged.program.model_copy(update={"vma": vma_too})}
    )
    assert judge(both).kind == "data-mismatch"


def test_data_that_checked_out_on_one_node_stays_invalid() -> None:
    verdict = judge(with_data("private-truncate", [], numa_nodes=1, error="numa: 1 node"))
    assert verdict.kind == "invalid"
    assert verdict.detail == "guest had 1 NUMA node(s); trial program: numa: 1 node"


def test_a_kernel_report_outranks_a_data_mismatch() -> None:
    result = with_data("private-truncate", [page(0, "truncated", "sigbus", "cow")])
    assert judge(result.model_copy(update={"console": console("zapfarm-bad-page-map")})).kind == (
        "kernel-report"
    )


def test_private_cows_that_stay_are_not_an_smaps_mismatch() -> None:
    """A hole punch keeps private COWed pages: Rss made of Anonymous pages is due."""
    kept = with_program(vma={"rss_kb": 512, "pss_shmem_kb": 512, "anon_kb": 512})
    assert judge(kept).kind == "clean"
    leaked = with_program(vma={"rss_kb": 516, "pss_shmem_kb": 516, "anon_kb": 512})
    verdict = judge(leaked)
    assert verdict.kind == "smaps-mismatch" and "Rss 4 kB" in (verdict.detail or "")


def test_data_mismatch_is_a_finding_kind_ranked_below_kernel_reports() -> None:
    assert "data-mismatch" in FINDING_KINDS
    assert (
        KINDS.index("kernel-report") < KINDS.index("data-mismatch") < KINDS.index("smaps-mismatch")
    )


def test_mismatch_list_is_bounded() -> None:
    with pytest.raises(ValidationError):
        DataCheck(
            checked=10, mismatches=9, first=[page(i, "zapped", "zero", "file") for i in range(9)]
        )
    with pytest.raises(ValidationError):
        DataCheck(
            checked=1, mismatches=1, first=[{**page(0, "zapped", "zero", "file"), "got": "x"}]
        )


def crashed(sig: int) -> TrialResult:
    """What workers/trial.py records when the agent reports status "signaled"."""
    return clean_result(
        outcome="program-error",
        program=None,
        signal=sig,
        error="trial program did not exit normally: status 'signaled'",
    )


@pytest.mark.parametrize(("sig", "name"), [(11, "SIGSEGV"), (7, "SIGBUS"), (4, "SIGILL")])
def test_a_crashed_trial_program_is_a_program_crash_finding(sig: int, name: str) -> None:
    verdict = judge(crashed(sig))
    assert verdict.kind == "program-crash" and verdict.is_finding
    assert verdict.title == f"program-crash: zapmigrate killed by {name}"


def test_a_killed_trial_program_is_not_a_crash() -> None:
    assert judge(crashed(9)).kind == "invalid"  # SIGKILL: the OOM killer, not memory damage


def test_a_kernel_report_beside_a_crash_names_the_finding() -> None:
    verdict = judge(crashed(11).model_copy(update={"console": console("zapfarm-bad-page-map")}))
    assert (verdict.kind, verdict.title) == ("kernel-report", "BUG: Bad page map")


def test_warnings_are_recorded_beside_a_clean_verdict() -> None:
    base = clean_result()
    program = base.program.model_copy(update={"warnings": ["affinity cpu 1: EINVAL"]})
    verdict = judge(base.model_copy(update={"program": program}))
    assert verdict.kind == "clean"
    assert verdict.detail == "warning: affinity cpu 1: EINVAL"


def test_warnings_do_not_hide_an_oracle() -> None:
    base = with_program(rss_shmem_kb={"before": 836, "punched": 840})
    program = base.program.model_copy(update={"warnings": ["pthread_create (pressure): EAGAIN"]})
    verdict = judge(base.model_copy(update={"program": program}))
    assert verdict.kind == "counter-mismatch"
    assert "warning: pthread_create (pressure): EAGAIN" in (verdict.detail or "")


def test_a_fatal_program_error_still_lets_the_oracles_speak() -> None:
    base = with_program(vma={"rss_kb": 8, "pss_shmem_kb": 8})
    stopped = base.program.model_copy(update={"error": "stopped by signal 15"})
    verdict = judge(base.model_copy(update={"program": stopped}))
    assert verdict.kind == "smaps-mismatch"
    assert "program error: stopped by signal 15" in (verdict.detail or "")
    clean_but_stopped = clean_result().program.model_copy(update={"error": "stopped by signal 15"})
    verdict = judge(clean_result().model_copy(update={"program": clean_but_stopped}))
    assert (verdict.kind, verdict.detail) == ("invalid", "trial program: stopped by signal 15")


def test_pages_left_unpunched_make_the_oracles_inapplicable() -> None:
    verdict = judge(
        with_program(
            punch={"calls": 10, "errors": 3, "unpunched": 5}, vma={"rss_kb": 20, "pss_shmem_kb": 20}
        )
    )
    assert verdict.kind == "invalid"
    assert "5 page(s) left unpunched (3 of 10 punch calls failed)" in (verdict.detail or "")


def test_failed_punches_that_the_sweep_made_good_leave_the_oracles_in_charge() -> None:
    assert judge(with_program(punch={"calls": 10, "errors": 3, "unpunched": 0})).kind == "clean"
    verdict = judge(
        with_program(punch={"calls": 10, "errors": 3, "unpunched": 0}, vma={"rss_kb": 4})
    )
    assert verdict.kind == "smaps-mismatch"


def test_an_older_program_that_punched_nothing_is_invalid() -> None:
    verdict = judge(with_program(punch={"calls": 4, "errors": 4}))
    assert verdict.kind == "invalid" and "every page left unpunched" in (verdict.detail or "")
