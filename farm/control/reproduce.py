"""Reproduce a reported seed: N runs per kernel, hit rates with Wilson intervals.

As in syzkaller's repro, a seed is run several times (default 10) per
kernel; as in ClusterFuzz, a finding is *reliable* when at least half of the
runs hit it, and *flaky* otherwise (flagged, never dropped). A run "hits"
when its verdict is a finding kind (kernel report, oracle mismatch, crash,
hang). What counts as a run is ``farm.triage.kinds.is_run``: infrastructure
errors and invalid trials tested nothing and are counted apart, the same rule
the web's reproducibility column and minimisation use.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from farm.triage.kinds import VerdictKind, is_finding, is_run

RELIABLE_RATE = 0.5  # ClusterFuzz's bar
Z95 = 1.959963984540054


def wilson(hits: int, runs: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial rate: sane at 0/n and n/n, unlike the normal one."""
    if runs <= 0:
        return (0.0, 1.0)
    if not 0 <= hits <= runs:
        raise ValueError(f"hits {hits} must be within 0..{runs}")
    p = hits / runs
    denom = 1 + z * z / runs
    centre = (p + z * z / (2 * runs)) / denom
    half = z * math.sqrt(p * (1 - p) / runs + z * z / (4 * runs * runs)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass
class KernelTally:
    runs: int = 0
    hits: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)
    titles: Counter[str] = field(default_factory=Counter)

    def to_json(self) -> dict[str, Any]:
        lo, hi = wilson(self.hits, self.runs)
        rate = self.hits / self.runs if self.runs else 0.0
        return {
            "runs": self.runs,
            "hits": self.hits,
            "rate": round(rate, 4),
            "ci95": [round(lo, 4), round(hi, 4)],
            "reliable": self.runs > 0 and rate >= RELIABLE_RATE,
            "verdicts": dict(self.verdicts),
            "titles": dict(self.titles.most_common(5)),
        }


@dataclass
class Reproduction:
    token: str
    kernels: dict[str, KernelTally] = field(default_factory=lambda: defaultdict(KernelTally))
    untested: Counter[str] = field(default_factory=Counter)  # verdict -> trials, not runs
    campaign: str = ""

    @property
    def infra_errors(self) -> int:
        return self.untested[VerdictKind.INFRA_ERROR]

    def add(self, kernel: str, verdict: str, title: str | None = None) -> None:
        if not is_run(verdict):
            self.untested[verdict] += 1
            return
        tally = self.kernels[kernel]
        tally.runs += 1
        tally.verdicts[verdict] += 1
        if is_finding(verdict):
            tally.hits += 1
            tally.titles[title or verdict] += 1

    def to_json(self) -> dict[str, Any]:
        runs = sum(t.runs for t in self.kernels.values())
        hits = sum(t.hits for t in self.kernels.values())
        lo, hi = wilson(hits, runs)
        return {
            "token": self.token,
            "campaign": self.campaign,
            "runs": runs,
            "hits": hits,
            "rate": round(hits / runs, 4) if runs else 0.0,
            "ci95": [round(lo, 4), round(hi, 4)],
            "reliable": runs > 0 and hits / runs >= RELIABLE_RATE,
            "infra_errors": self.infra_errors,
            "invalid": self.untested[VerdictKind.INVALID],
            "kernels": {name: tally.to_json() for name, tally in sorted(self.kernels.items())},
        }
