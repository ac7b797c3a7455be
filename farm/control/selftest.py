"""The farm's controls: prove the farm detects the bug it exists for, and nothing on a fixed kernel.

- Positive control: a kernel built with the upstream fix (5abfd71d936a)
  reverted and ``WARN_ON_ONCE(is_migration_entry(entry))`` at the skip site
  (``farm kernels build --source 6.1 --instrument warn --revert-fix``). The
  campaign must produce the finding ``WARNING in zap_pte_range`` (``WARNING in
  unmap_page_range`` where the compiler inlined it).
- Negative control: the stock Debian kernel, same budget: no finding at all.

A farm that has never detected a known bug proves nothing; this is its proof.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from sqlalchemy.orm import Session, sessionmaker

from farm.control import campaigns
from farm.protocol import TrialResult
from farm.settings import Settings
from farm.triage.verdict import FINDING_KINDS, judge

# zap_pte_range() is static: where the compiler inlines it (the small builds do), the
# WARN's RIP and so its syzkaller title name the function it was inlined into.
EXPECTED_TITLES = frozenset({"WARNING in zap_pte_range", "WARNING in unmap_page_range"})


@dataclass
class Control:
    kernel: str
    campaign: str
    trials: int = 0
    first_hit: int | None = None  # 1-based trial count when the expected finding first appeared
    hits: int = 0
    findings: dict[str, int] = field(default_factory=dict)

    def add(self, result: TrialResult, verdict: str) -> None:
        self.trials += 1
        if verdict not in FINDING_KINDS:
            return
        title = judge(result).title or verdict
        self.findings[title] = self.findings.get(title, 0) + 1
        if title in EXPECTED_TITLES:
            self.hits += 1
            if self.first_hit is None:
                self.first_hit = self.trials

    def to_json(self) -> dict[str, Any]:
        return {
            "kernel": self.kernel,
            "campaign": self.campaign,
            "trials": self.trials,
            "trials_to_first_hit": self.first_hit,
            "hits": self.hits,
            "hit_rate": round(self.hits / self.trials, 4) if self.trials else 0.0,
            "findings": self.findings,
        }


def default_positive(cache_dir: Any) -> str | None:
    from farm.artifacts.kernels import cached_kernels

    built = [k.name for k in cached_kernels(cache_dir) if "warn-revertfix" in k.name]
    return built[-1] if built else None


class ControlError(ValueError):
    """A control that cannot run; the message names the fix."""


def run_controls(
    settings: Settings,
    sessions: sessionmaker[Session],
    positive: str,
    negative: str,
    trials: int,
    console: Console,
) -> tuple[Control, Control]:
    """Run both controls with the same budget on this machine; the kernels must be known."""
    from farm.artifacts.kernels import cached_kernels, installed_kernel
    from farm.control.local import run_locally
    from farm.store.db import ensure_kernel

    stamp = time.strftime("%Y%m%d-%H%M%S")
    controls = {
        positive: Control(positive, f"selftest-positive-{stamp}"),
        negative: Control(negative, f"selftest-negative-{stamp}"),
    }
    stock = installed_kernel()
    with sessions.begin() as session:
        ensure_kernel(
            session, stock.name, stock.release, str(stock.path), stock.sha256, stock.source
        )
        for k in cached_kernels(settings.cache_dir):
            ensure_kernel(session, k.name, k.release, str(k.path), k.sha256 or None, k.source)
        for control in controls.values():
            spec = campaigns.parse_spec(
                {
                    "name": control.campaign,
                    "kernels": [control.kernel],
                    "concurrency": 2,
                    "budget": {"trials": trials},
                    # the race needs pages and rounds; VM throttling only slows it down here
                    "ranges": {"pages": [1024, 8192]},
                    "params": {"cpu_quota_pct": 100, "vcpu_pin": "none"},
                },
                "selftest",
            )
            try:
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


def passed(positive: Control, negative: Control) -> bool:
    """The farm found the bug where it is, and nothing where it is not."""
    return positive.first_hit is not None and not negative.findings
