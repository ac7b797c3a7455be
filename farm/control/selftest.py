"""The farm's controls: a fair pair of kernels that differ only by the bug.

A control compares like with like: both kernels are built from one source with
one instrumentation, and the only difference is ``--revert-fix`` (upstream
5abfd71d936a reverted, so zaps with details skip swap and migration entries
again). The same campaign (every scenario, the same budget) runs on both.

- **PASS**: an oracle of lasting damage (counter, teardown, VMA, data) fires on
  the reverted kernel and never on the fixed one.
- **WINDOW ONLY**: no damage oracle separates them, but the window signal
  does (the reverted kernel's count of skipped entries is non-zero, the fixed
  kernel's is zero by construction). The farm says so plainly: it saw the bug's
  mechanism, not its damage.
- **FAIL**: anything else, including damage on the fixed kernel.

Comparing a fix-reverted, WARN-instrumented kernel with a stock one (as an
earlier selftest did) measures the instrumentation, not the bug: the WARN at
the skip site fires on fixed kernels too.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from rich.console import Console
from sqlalchemy.orm import Session, sessionmaker

from farm.control import campaigns
from farm.protocol import TrialResult
from farm.settings import Settings
from farm.triage.kinds import is_damage, is_run
from farm.triage.verdict import judge

_BUILD_NAME = re.compile(r"^build-(?P<series>[0-9.]+)-(?P<flags>[a-z-]+)-(?P<key>[0-9a-f]{8})$")


class ControlError(ValueError):
    """A control that cannot run or is not fair; the message names the fix."""


@dataclass(frozen=True)
class Build:
    """What a farm-built kernel's name says of it: series, instrumentation, revert-fix."""

    name: str
    series: str
    instrument: str | None
    revert_fix: bool
    patched: bool

    @classmethod
    def parse(cls, name: str) -> Build:
        m = _BUILD_NAME.match(name)
        if m is None:
            raise ControlError(
                f"{name!r} is not a farm-built kernel (build-<series>-<flags>-<key>): "
                "a fair control needs two builds of one source, "
                "`farm kernels build --source 6.1 --instrument count [--revert-fix]`"
            )
        flags = m["flags"].split("-")
        known = {"revertfix", "patched", "plain"}
        instrument = next((f for f in flags if f not in known), None)
        return cls(name, m["series"], instrument, "revertfix" in flags, "patched" in flags)


def fair_pair(positive: str, negative: str) -> tuple[Build, Build]:
    """Check that the two kernels differ only by --revert-fix, naming the twin to build if not."""
    pos, neg = Build.parse(positive), Build.parse(negative)
    if not pos.revert_fix or neg.revert_fix:
        raise ControlError(
            f"the positive control must have the fix reverted and the negative not: "
            f"{positive} (revert-fix {pos.revert_fix}), {negative} (revert-fix {neg.revert_fix})"
        )
    if (pos.series, pos.instrument, pos.patched) != (neg.series, neg.instrument, neg.patched):
        instrument = f" --instrument {pos.instrument}" if pos.instrument else ""
        raise ControlError(
            f"unfair control: {positive} and {negative} differ in more than --revert-fix "
            f"(source {pos.series} vs {neg.series}, instrumentation {pos.instrument} vs "
            f"{neg.instrument}); build the twin with "
            f"`farm kernels build --source {pos.series}{instrument}`"
        )
    return pos, neg


def default_pair(names: list[str]) -> tuple[str, str] | None:
    """The newest fix-reverted build that has a fair twin among ``names``, and that twin."""
    builds = []
    for name in names:
        try:
            builds.append(Build.parse(name))
        except ControlError:
            continue
    for pos in reversed(builds):
        if not pos.revert_fix:
            continue
        for neg in reversed(builds):
            key = (neg.series, neg.instrument, neg.patched)
            if not neg.revert_fix and key == (pos.series, pos.instrument, pos.patched):
                return pos.name, neg.name
    return None


@dataclass
class Control:
    kernel: str
    campaign: str
    trials: int = 0  # runs: trials that tested the kernel
    untested: int = 0
    window_entries: int = 0
    window_skipped: int = 0
    damage: dict[str, int] = field(default_factory=dict)  # title -> trials
    tokens: dict[str, str] = field(default_factory=dict)  # title -> first token
    findings: dict[str, int] = field(default_factory=dict)  # every finding title -> trials

    def add(self, result: TrialResult, verdict: str) -> None:
        if not is_run(verdict):
            self.untested += 1
            return
        self.trials += 1
        if result.window is not None:
            self.window_entries += result.window.entries + result.window.swap_entries
            self.window_skipped += result.window.skipped + result.window.swap_skipped
        judged = judge(result)
        if not judged.is_finding:
            return
        title = judged.title or verdict
        self.findings[title] = self.findings.get(title, 0) + 1
        if is_damage(verdict, judged.title):
            self.damage[title] = self.damage.get(title, 0) + 1
            self.tokens.setdefault(title, result.token)

    @property
    def damaged(self) -> int:
        return sum(self.damage.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "kernel": self.kernel,
            "campaign": self.campaign,
            "trials": self.trials,
            "untested": self.untested,
            "window_entries": self.window_entries,
            "window_skipped": self.window_skipped,
            "damage_trials": self.damaged,
            "damage": [
                {"title": t, "trials": n, "token": self.tokens[t]} for t, n in self.damage.items()
            ],
            "findings": self.findings,
        }


class Outcome(StrEnum):
    PASS = "pass"
    WINDOW_ONLY = "window-only"
    FAIL = "fail"


def outcome(positive: Control, negative: Control) -> tuple[Outcome, str]:
    """The controls' verdict and a sentence saying why."""
    if negative.damaged:
        return Outcome.FAIL, (
            f"damage on the fixed kernel {negative.kernel} ({negative.damaged} trials): "
            "either the fix is incomplete or an oracle is wrong"
        )
    if positive.damaged:
        return Outcome.PASS, (
            f"lasting damage separates them: {positive.damaged} of {positive.trials} trials "
            f"on {positive.kernel}, 0 of {negative.trials} on {negative.kernel}"
        )
    if positive.window_skipped and not negative.window_skipped:
        return Outcome.WINDOW_ONLY, (
            f"only the window signal separates them: {positive.window_skipped} skipped entries "
            f"on {positive.kernel}, none on {negative.kernel}; no damage oracle fired on either"
        )
    return Outcome.FAIL, (
        f"nothing separates them: no damage, skipped entries {positive.window_skipped} vs "
        f"{negative.window_skipped} (window entries {positive.window_entries} vs "
        f"{negative.window_entries}): is {positive.kernel} a --instrument count build?"
    )


def control_spec(campaign: str, kernel: str, trials: int) -> campaigns.CampaignSpec:
    """One control's campaign: uniform draws of space v3, so every scenario is in the budget."""
    return campaigns.parse_spec(
        {
            "name": campaign,
            "kernels": [kernel],
            "concurrency": 1,
            "search": "uniform",
            "budget": {"trials": trials},
            "ranges": {"pages": [256, 2048]},
            # VM throttling only slows the race down here
            "params": {"cpu_quota_pct": 100, "vcpu_pin": "none"},
        },
        "selftest",
    )


def run_controls(
    settings: Settings,
    sessions: sessionmaker[Session],
    positive: str,
    negative: str,
    trials: int,
    console: Console,
) -> tuple[Control, Control]:
    """Run the same campaign (every scenario, ``trials`` each kernel) on both kernels here."""
    from farm.artifacts.kernels import cached_kernels
    from farm.control.local import run_locally
    from farm.store.db import ensure_kernel

    stamp = time.strftime("%Y%m%d-%H%M%S")
    controls = {
        positive: Control(positive, f"selftest-positive-{stamp}"),
        negative: Control(negative, f"selftest-negative-{stamp}"),
    }
    with sessions.begin() as session:
        for k in cached_kernels(settings.cache_dir):
            if k.name in controls:
                ensure_kernel(session, k.name, k.release, str(k.path), k.sha256 or None, k.source)
        for control in controls.values():
            try:
                spec = control_spec(control.campaign, control.kernel, trials)
                campaigns.transition(campaigns.create(session, spec), "running")
            except campaigns.CampaignError as exc:
                raise ControlError(str(exc)) from exc

    def record(result: TrialResult, verdict: str) -> None:
        for control in controls.values():
            if result.trial_id.startswith(control.campaign + "-"):
                control.add(result, verdict)

    run_locally(
        settings,
        sessions,
        [positive, negative],
        2 * trials,
        console,
        label="controls",
        on_record=record,
    )
    return controls[positive], controls[negative]


def cached_names(cache_dir: Path) -> list[str]:
    from farm.artifacts.kernels import cached_kernels

    return [k.name for k in cached_kernels(cache_dir)]
