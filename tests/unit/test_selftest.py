"""The fair control's logic on recorded results: which pairs are fair, and what separates them."""

from __future__ import annotations

import random

import pytest
from test_verdict import clean_result, console

from farm.control.scheduler import make_sampler
from farm.control.selftest import (
    Build,
    Control,
    ControlError,
    Outcome,
    control_spec,
    default_pair,
    fair_pair,
    outcome,
)
from farm.params import SCENARIOS
from farm.protocol import Window
from farm.triage.verdict import judge

REVERTED = "build-6.1-count-revertfix-5abfa8ae"
FIXED = "build-6.1-count-18b8646e"


def test_build_names_say_series_instrumentation_and_revert() -> None:
    assert Build.parse(REVERTED) == Build(REVERTED, "6.1", "count", True, False)
    assert Build.parse(FIXED) == Build(FIXED, "6.1", "count", False, False)
    assert Build.parse("build-5.10-plain-0123abcd").instrument is None
    with pytest.raises(ControlError, match="not a farm-built kernel"):
        Build.parse("debian-6.1.0-56-amd64")


@pytest.mark.parametrize(
    ("positive", "negative", "problem"),
    [
        (REVERTED, "build-6.1-warn-0123abcd", "instrumentation count vs warn"),
        (REVERTED, "build-5.10-count-0123abcd", "source 6.1 vs 5.10"),
        (REVERTED, "debian-6.1.0-56-amd64", "not a farm-built kernel"),
        (FIXED, REVERTED, "must have the fix reverted"),
        (REVERTED, "build-6.1-count-patched-0123abcd", "differ in more than"),
    ],
)
def test_unfair_pairs_are_refused_naming_the_twin(
    positive: str, negative: str, problem: str
) -> None:
    with pytest.raises(ControlError, match=problem) as info:
        fair_pair(positive, negative)
    if "differ in more" in str(info.value):
        assert "farm kernels build --source 6.1 --instrument count" in str(info.value)


def test_the_default_pair_is_a_fair_one() -> None:
    names = ["build-6.1-warn-revertfix-11111111", FIXED, REVERTED, "build-6.1-warn-patched-2222"]
    assert default_pair(names) == (REVERTED, FIXED)
    assert default_pair(["build-6.1-warn-revertfix-11111111", FIXED]) is None
    fair_pair(*default_pair(names))  # type: ignore[misc]


def _window(entries: int, skipped: int) -> Window:
    return Window(entries=entries, skipped=skipped, swap_entries=0, swap_skipped=0)


def test_control_tallies_runs_window_and_damage() -> None:
    control = Control(REVERTED, "c")
    control.add(clean_result(window=_window(40, 3)), "clean")
    rss = clean_result(console=console("zapfarm-rss-counter-type"), window=_window(10, 1))
    control.add(rss, judge(rss).kind)
    warn = clean_result(console=console("zapfarm-real-warn-inlined"))
    control.add(warn, judge(warn).kind)  # a finding, but it marks the window, not damage
    control.add(clean_result(outcome="infra-error", program=None), "infra-error")
    assert (control.trials, control.untested) == (3, 1)
    assert (control.window_entries, control.window_skipped) == (50, 4)
    assert control.damage == {"BUG: Bad rss-counter state": 1}
    assert control.tokens["BUG: Bad rss-counter state"] == rss.token
    assert set(control.findings) == {"BUG: Bad rss-counter state", "WARNING in unmap_page_range"}


def _control(name: str, damage: int = 0, skipped: int = 0) -> Control:
    c = Control(name, "c", trials=100, window_entries=500, window_skipped=skipped)
    if damage:
        c.damage = {"data: private COW page survives truncate (private-truncate)": damage}
    return c


def test_outcomes() -> None:
    assert outcome(_control(REVERTED, damage=5, skipped=9), _control(FIXED))[0] is Outcome.PASS
    result, why = outcome(_control(REVERTED, skipped=9), _control(FIXED))
    assert result is Outcome.WINDOW_ONLY and "only the window signal" in why
    assert outcome(_control(REVERTED), _control(FIXED))[0] is Outcome.FAIL
    result, why = outcome(_control(REVERTED, damage=5), _control(FIXED, damage=1))
    assert result is Outcome.FAIL and "damage on the fixed kernel" in why


def test_the_search_signal_is_the_kernel_count_else_the_proxy() -> None:
    from farm.protocol import Proxy, window_entries

    base = clean_result()
    assert base.program is not None
    proxied = base.model_copy(
        update={
            "program": base.program.model_copy(
                update={"proxy": Proxy(overlapped=12, moved=3, gone=1)}
            )
        }
    )
    assert window_entries(proxied) == 12
    counted = proxied.model_copy(
        update={"window": Window(entries=40, skipped=0, swap_entries=2, swap_skipped=0)}
    )
    assert window_entries(counted) == 42  # the kernel's own count wins
    assert window_entries(base.model_copy(update={"program": None})) == 0


def test_a_control_campaign_draws_every_scenario_unthrottled() -> None:
    """The spec a control runs parses, and its draws cover every scenario of space v3."""
    spec = control_spec("selftest-positive-1", "build-6.1-count-revertfix-b8c92c35", 60)
    sampler = make_sampler(spec, None)
    assert sampler is not None
    rng = random.Random(7)
    drawn = [sampler.propose(rng).params() for _ in range(300)]
    assert {p.scenario for p in drawn} == set(SCENARIOS)
    assert all(256 <= p.pages <= 2048 and p.cpu_quota_pct == 100 for p in drawn)
    assert spec.budget.trials == 60 and spec.kernels == ["build-6.1-count-revertfix-b8c92c35"]
