"""The farm's answer to the seed thread: did a kernel damage shmem accounting or user data?

One row per kernel x scenario: how many trials tested it, how often they entered
the race window, which lasting damage was found (with a token that reproduces
it), and, when none was, how small the damage rate can still be. That last
number is the rule of three: after ``n`` independent opportunities without an
event, the 95 % upper bound of the event's probability is about ``3 / n``. The
opportunities are window entries (in-kernel counts on ``--instrument count``
builds, else the trial program's user-space proxy), and trials.

"Lasting damage" is what the zap bug class can leave behind: a counter that
does not return (counter oracle, teardown oracle's ``Bad rss-counter``), pages
that stay mapped (VMA oracle) or data that survives where POSIX says it must
not (data oracle). A WARN at the skip site marks the window, not damage.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from farm.store.models import Kernel, Trial, TrialStatus
from farm.triage.kinds import is_damage, is_run

RULE_OF_THREE = 3.0  # -ln(0.05) = 2.996: the 95 % bound after n clean opportunities is 3/n


@dataclass
class Damage:
    kind: str
    title: str
    trials: int = 0
    token: str = ""  # the first trial's token: `farm reproduce TOKEN` runs it again


@dataclass
class Row:
    kernel: str
    scenario: str
    trials: int = 0  # runs: trials that tested the kernel
    window: int | None = None  # in-kernel window entries (None: no count instrumentation)
    skipped: int | None = None  # of those, entries the kernel left in place (revert-fix)
    proxy: int = 0  # the user-space proxy's window entries, on every kernel
    damage: dict[str, Damage] = field(default_factory=dict)

    @property
    def opportunities(self) -> int:
        """Window entries: the in-kernel count where the kernel has it, else the proxy."""
        return self.window if self.window is not None else self.proxy

    @property
    def damaged(self) -> int:
        return sum(d.trials for d in self.damage.values())

    def bound_per_entry(self) -> float | None:
        """95 % upper bound on damage per window entry, when no damage was seen."""
        if self.damaged or not self.opportunities:
            return None
        return RULE_OF_THREE / self.opportunities

    def bound_per_trial(self) -> float | None:
        if self.damaged or not self.trials:
            return None
        return RULE_OF_THREE / self.trials

    def to_json(self) -> dict[str, Any]:
        return {
            "kernel": self.kernel,
            "scenario": self.scenario,
            "trials": self.trials,
            "window_entries": self.window,
            "window_skipped": self.skipped,
            "proxy_entries": self.proxy,
            "damage_trials": self.damaged,
            "damage": [
                {"kind": d.kind, "title": d.title, "trials": d.trials, "token": d.token}
                for d in sorted(self.damage.values(), key=lambda d: -d.trials)
            ],
            "bound_per_entry_95": self.bound_per_entry(),
            "bound_per_trial_95": self.bound_per_trial(),
        }


@dataclass(frozen=True)
class Observed:
    """One recorded trial, as evidence reads it."""

    kernel: str
    scenario: str
    token: str
    verdict: str
    title: str | None
    window: int | None
    skipped: int | None
    proxy: int


def tabulate(trials: Iterable[Observed]) -> list[Row]:
    """Rows per (kernel, scenario), sorted; trials that tested nothing are left out."""
    rows: dict[tuple[str, str], Row] = {}
    for t in trials:
        if not is_run(t.verdict):
            continue
        row = rows.setdefault((t.kernel, t.scenario), Row(t.kernel, t.scenario))
        row.trials += 1
        row.proxy += t.proxy
        if t.window is not None:
            row.window = (row.window or 0) + t.window
            row.skipped = (row.skipped or 0) + (t.skipped or 0)
        if is_damage(t.verdict, t.title):
            title = t.title or t.verdict
            found = row.damage.setdefault(title, Damage(t.verdict, title, token=t.token))
            found.trials += 1
    return [rows[key] for key in sorted(rows)]


def _proxy_of(result: dict[str, Any] | None) -> int:
    program = (result or {}).get("program") or {}
    proxy = program.get("proxy") or {}
    value = proxy.get("overlapped", 0)
    return value if isinstance(value, int) and value >= 0 else 0


def observed(session: Session, kernels: Sequence[str] = ()) -> Iterable[Observed]:
    """Every recorded trial of these kernels (all kernels when none are named)."""
    stmt = (
        select(
            Kernel.name,
            Trial.params,
            Trial.token,
            Trial.verdict,
            Trial.title,
            Trial.window_entries,
            Trial.window_skipped,
            Trial.result,
        )
        .join(Kernel, Trial.kernel_id == Kernel.id)
        .where(Trial.status == TrialStatus.DONE)
        .execution_options(yield_per=2000)
    )
    if kernels:
        stmt = stmt.where(Kernel.name.in_(list(kernels)))
    for name, params, token, verdict, title, window, skipped, result in session.execute(stmt):
        scenario = str((params or {}).get("scenario", "shared-punch"))
        yield Observed(
            name, scenario, token, verdict or "", title, window, skipped, _proxy_of(result)
        )


def evidence(session: Session, kernels: Sequence[str] = ()) -> list[Row]:
    return tabulate(observed(session, kernels))


def _rate(value: float | None) -> str:
    return "—" if value is None else f"≤ {value:.2g}"


def markdown(rows: Sequence[Row], command: str) -> str:
    """The evidence table as Markdown (docs/evidence.md is this, regenerated by ``command``)."""
    lines = [
        "# Evidence: lasting damage per kernel and scenario",
        "",
        f"Generated by `{command}`; do not edit by hand.",
        "",
        "Window entries are the kernel's own count on `--instrument count` builds",
        "(skipped: entries the pre-fix code left in place), else the trial program's",
        "user-space proxy. When no damage was seen, the bounds are the rule of three:",
        "the 95 % upper bound of damage per window entry and per trial.",
        "",
        "| kernel | scenario | trials | window entries (skipped) | proxy | damage | "
        "bound / entry | bound / trial |",
        "|---|---|---:|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        window = "—" if r.window is None else f"{r.window} ({r.skipped or 0})"
        damage = (
            "<br>".join(f"{d.title} ×{d.trials}: `{d.token}`" for d in r.damage.values()) or "none"
        )
        lines.append(
            f"| {r.kernel} | {r.scenario} | {r.trials} | {window} | {r.proxy} | {damage} | "
            f"{_rate(r.bound_per_entry())} | {_rate(r.bound_per_trial())} |"
        )
    return "\n".join(lines) + "\n"
