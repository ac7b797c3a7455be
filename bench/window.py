"""Race-window entries per guest-hour: the seed-2022 preset, uniform and guided search; JSON.

Why: the guided search (Thompson sampling, cost-aware: docs/search.md) claims
more window entries per guest-second than drawing seeds uniformly, and far more
than the one parameter set of the 2022 reproducer. This measures the claim on
real TCG guests of a ``--instrument count`` kernel, where the kernel itself
counts the entries (/proc/vmstat ``zapfarm_*``, docs/kernels.md), so the search's
objective is measured, not its user-space proxy. Not a timed test.

    .venv/bin/python bench/window.py [--budget-s 600] [--kernel NAME] [--database-url URL]
                                     [--arms seed_2022,uniform,guided]

Three real farm campaigns run one after another, as ``farm demo`` runs one:
SQLite (a fresh file under the cache's bench/ folder unless ``--database-url``),
a local worker, the scheduler. Each has the guest slot to itself for the same
wall budget (``budget.hours`` from its own start) with one trial in flight.

- ``seed_2022``: the ``seed-2022`` preset (every knob fixed, random seeds);
- ``uniform``: uniform draws over the whole parameter space (farm.params);
- ``guided``: the Thompson search over the same space.

Per arm: trials (tested: clean or a finding; infra errors apart), guest-seconds,
window entries and entries per guest-hour, all as the search counts them
(farm.store.signal), and findings. Plus guided/uniform and guided/seed_2022
ratios, and how well the program's proxy tracks the kernel's count over every
trial (Pearson and Spearman). ``--kernel`` defaults to the newest fixed 6.1
count build in the cache (``farm kernels list``). Each arm's first trial is
checked against the wire contract before anything boots; ``--arms`` leaves
out an arm that cannot run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session, sessionmaker

from farm.artifacts.guest_image import build_initramfs
from farm.artifacts.kernels import KernelImage, cached_kernels
from farm.control import campaigns
from farm.control.campaigns import CampaignSpec
from farm.control.local import check_hypervisor, run_locally
from farm.control.scheduler import make_sampler
from farm.control.selftest import Build, ControlError
from farm.protocol import MessageError, TrialResult, guest_seconds, trial_message, window_entries
from farm.settings import Settings, load_settings
from farm.store import signal
from farm.store.db import ensure_kernel, make_engine, session_factory, upgrade
from farm.store.models import Campaign, Trial, TrialStatus
from farm.triage.kinds import FINDING_KINDS, KINDS, is_finding, is_run

SERIES = "6.1"
BUILD_HINT = f"farm kernels build --source {SERIES} --instrument count"
# arm -> what its campaign spec adds; same kernel, budget and concurrency for all
ARMS: dict[str, dict[str, Any]] = {
    "seed_2022": {"preset": "seed-2022"},
    "uniform": {"search": "uniform"},
    "guided": {"search": "thompson"},
}
GRACE_S = 60.0  # past the budget: the last trial in flight may still land


def count_build(cache_dir: Path, name: str | None) -> KernelImage:
    """The kernel to run: ``name``, or the newest fixed 6.1 ``--instrument count`` build."""
    found = []
    for kernel in cached_kernels(cache_dir):
        try:
            build = Build.parse(kernel.name)
        except ControlError:
            continue
        if (build.series, build.instrument, build.revert_fix) == (SERIES, "count", False):
            found.append((build, kernel))
    if name is not None:
        for build, kernel in found:
            if kernel.name == name and not build.patched:
                return kernel
        raise SystemExit(
            f"{name!r} is not a fixed {SERIES} --instrument count build in {cache_dir}/kernels "
            f"(known: {', '.join(k.name for _, k in found) or 'none'}); build one with "
            f"`{BUILD_HINT}`"
        )
    plain = [kernel for build, kernel in found if not build.patched]
    if not plain:
        raise SystemExit(
            f"no fixed {SERIES} --instrument count build in {cache_dir}/kernels: the kernel's "
            f"window counters are what this bench measures; build one with `{BUILD_HINT}` "
            "(then `farm kernels list` shows it)"
        )
    return max(plain, key=lambda k: k.path.stat().st_mtime)  # names end in a hash, not a date


def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing their average rank (for Spearman)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson's r; None with fewer than 3 pairs or a constant side (r is undefined)."""
    n = len(x)
    if n < 3:
        return None
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    if sxx == 0 or syy == 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def agreement(pairs: Sequence[tuple[int, int]]) -> dict[str, Any]:
    """How the proxy (first) tracks the kernel's count (second) over trials."""
    proxy = [float(p) for p, _ in pairs]
    count = [float(c) for _, c in pairs]
    r = pearson(proxy, count)
    rho = pearson(ranks(proxy), ranks(count))
    return {
        "trials": len(pairs),
        "pearson": None if r is None else round(r, 3),
        "spearman": None if rho is None else round(rho, 3),
        "proxy_total": int(sum(proxy)),
        "count_total": int(sum(count)),
    }


def arm_summary(session: Session, campaign: str) -> dict[str, Any]:
    """What an arm's campaign did, counted from the database as the search counts it."""
    tested = [k for k in KINDS if is_run(k)]
    hit = case((Trial.verdict.in_(sorted(FINDING_KINDS)), 1), else_=0)
    trials, window, seconds, findings = session.execute(
        select(
            func.count(),
            func.coalesce(func.sum(signal.window_signal()), 0),
            func.coalesce(func.sum(signal.guest_seconds()), 0.0),
            func.coalesce(func.sum(hit), 0),
        )
        .join(Campaign, Campaign.id == Trial.campaign_id)
        .where(
            Campaign.name == campaign,
            Trial.status == TrialStatus.DONE,
            Trial.verdict.in_(tested),
        )
    ).one()
    verdicts = dict(
        session.execute(
            select(Trial.verdict, func.count())
            .join(Campaign, Campaign.id == Trial.campaign_id)
            .where(Campaign.name == campaign, Trial.status == TrialStatus.DONE)
            .group_by(Trial.verdict)
        ).all()
    )
    seconds = float(seconds)
    return {
        "campaign": campaign,
        "trials": int(trials),
        "guest_seconds": round(seconds, 1),
        "window_entries": int(window),
        "entries_per_guest_hour": round(window / seconds * 3600, 1) if seconds else None,
        "findings": int(findings),
        "verdicts": {str(k): v for k, v in sorted(verdicts.items(), key=lambda kv: str(kv[0]))},
    }


def proxy_pairs(session: Session, names: Sequence[str]) -> list[tuple[int, int]]:
    """(proxy, kernel count) of every tested trial that has both."""
    proxy = Trial.result[("program", "proxy", "overlapped")].as_integer()
    count = Trial.window_entries + func.coalesce(Trial.window_swap_entries, 0)
    rows = session.execute(
        select(proxy, count)
        .join(Campaign, Campaign.id == Trial.campaign_id)
        .where(
            Campaign.name.in_(names),
            Trial.window_entries.is_not(None),
            proxy.is_not(None),
        )
    ).all()
    return [(int(p), int(c)) for p, c in rows]


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


@dataclasses.dataclass
class ArmTally:
    trials: int = 0
    entries: int = 0
    seconds: float = 0.0
    findings: int = 0

    def text(self, arm: str) -> str:
        rate = f"{self.entries / self.seconds * 3600:,.0f}/gh" if self.seconds else "-"
        found = f" [red]{self.findings}F[/]" if self.findings else ""
        return f"[bold]{arm}[/] {self.trials}t {self.entries:,}e {rate}{found}"


class Live:
    """Per-arm tallies as results land, for the progress line (the JSON recounts in SQL)."""

    def __init__(self, names: dict[str, str], started: float, budget_s: float) -> None:
        self.names = names  # campaign name -> arm
        self.started, self.budget_s = started, budget_s
        self.arms = {arm: ArmTally() for arm in names.values()}

    def add(self, result: TrialResult, verdict: str) -> None:
        arm = next((a for n, a in self.names.items() if result.trial_id.startswith(n + "-")), None)
        if arm is None or not is_run(verdict):
            return
        t = self.arms[arm]
        t.trials += 1
        t.entries += window_entries(result)
        t.seconds += guest_seconds(result)
        t.findings += is_finding(verdict)

    def line(self, result: TrialResult, verdict: str) -> str:
        """entries per guest-hour (/gh) so far per arm, the time left and the latest trial."""
        left = max(0.0, self.budget_s - (time.monotonic() - self.started))
        arms = " · ".join(t.text(arm) for arm, t in self.arms.items())
        return f"{arms} · {left:.0f}s left · {result.trial_id}: {verdict}"


def specs(
    kernel: str, budget_s: float, stamp: str, arms: Sequence[str] = tuple(ARMS)
) -> dict[str, CampaignSpec]:
    """Each arm's campaign, checked to make trials the wire carries before any guest boots."""
    out = {}
    for arm in arms:
        extra = ARMS[arm]
        spec = campaigns.parse_spec(
            {
                "name": f"window-{arm.replace('_', '-')}-{stamp}",
                "kernels": [kernel],
                "concurrency": 1,
                "budget": {"hours": budget_s / 3600},
                **extra,
            },
            f"{arm} arm",
        )
        sampler = make_sampler(spec, None)
        token = str(sampler.propose(random.Random(0)) if sampler else spec.base_token(0))
        try:
            trial_message(f"{spec.name}-000000", token, kernel, None, 60.0)
        except MessageError as exc:
            others = ",".join(a for a in arms if a != arm)
            raise SystemExit(f"the {arm} arm cannot run: its trial {token!r} fails the wire "
                             f"contract (farm/protocol.py): {exc}; run the others with "
                             f"--arms {others}") from exc  # fmt: skip
        out[arm] = spec
    return out


def run(
    settings: Settings,
    kernel: KernelImage,
    arms: dict[str, CampaignSpec],
    budget_s: float,
    console: Console,
) -> dict[str, Any]:
    """Run the arms one after another, each alone on the slot for its budget; count what they did.

    One after another, not at once: sharing one slot turn by turn gives each arm
    the same number of trials, not the same time, so a 40 s seed-2022 trial
    would eat the budget of forty 1 s trials of the other arms.
    """
    with console.status("setting up: libvirtd, guest image, database, kernel"):
        check_hypervisor(settings)
        build_initramfs(settings.cache_dir)
        upgrade(settings.database_url)
        engine = make_engine(settings.database_url)
        sessions: sessionmaker[Session] = session_factory(engine)
        with sessions.begin() as session:
            ensure_kernel(
                session, kernel.name, kernel.release, str(kernel.path), kernel.sha256, kernel.source
            )
    names = {spec.name: arm for arm, spec in arms.items()}
    started = time.monotonic()
    for arm, spec in arms.items():
        run_arm(settings, sessions, kernel, arm, spec, budget_s, console)
    wall = time.monotonic() - started
    with sessions() as session:
        summaries = {arm: arm_summary(session, name) for name, arm in names.items()}
        pairs = proxy_pairs(session, list(names))
    engine.dispose()
    rate = {arm: a["entries_per_guest_hour"] for arm, a in summaries.items()}
    return {
        "bench": "window",
        "kernel": kernel.name,
        "budget_s": budget_s,
        "wall_s": round(wall, 1),
        "database_url": settings.database_url,
        "arms": summaries,
        "ratios": {
            "guided_over_uniform": ratio(rate.get("guided"), rate.get("uniform")),
            "guided_over_seed_2022": ratio(rate.get("guided"), rate.get("seed_2022")),
        },
        "proxy_vs_count": agreement(pairs),
    }


def run_arm(
    settings: Settings,
    sessions: sessionmaker[Session],
    kernel: KernelImage,
    arm: str,
    spec: CampaignSpec,
    budget_s: float,
    console: Console,
) -> None:
    """Start one arm's campaign (its budget.hours counts from here) and run it to the end."""
    with sessions.begin() as session:
        campaigns.transition(campaigns.create(session, spec), "running")
    started = time.monotonic()
    live = Live({spec.name: arm}, started, budget_s)
    checked = [0.0, False]  # last look at the campaign, whether it was done

    def done() -> bool:
        if time.monotonic() - started > budget_s + GRACE_S:
            return True
        if time.monotonic() - checked[0] > 2.0:
            with sessions() as session:
                status = session.scalar(select(Campaign.status).where(Campaign.name == spec.name))
            checked[:] = [time.monotonic(), status == "done"]
        return bool(checked[1])

    run_locally(
        settings,
        sessions,
        [kernel.name],
        None,
        console,
        label="window",
        on_record=live.add,
        stop_early=done,
        describe=live.line,
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--budget-s", type=float, default=600.0, help="wall seconds per arm (default 600)"
    )
    parser.add_argument(
        "--kernel", help=f"a fixed {SERIES} count build of the cache; default: the newest"
    )
    parser.add_argument(
        "--arms",
        default=",".join(ARMS),
        help=f"comma-separated, of {', '.join(ARMS)} (default: all)",
    )
    parser.add_argument(
        "--database-url", help="default: a fresh SQLite file under the cache's bench/ folder"
    )
    args = parser.parse_args(argv)
    if not args.budget_s > 0 or math.isinf(args.budget_s):
        parser.error(f"--budget-s must be a positive number of seconds, not {args.budget_s}")
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if not arms or any(a not in ARMS for a in arms) or len(set(arms)) != len(arms):
        parser.error(f"--arms takes distinct names of {', '.join(ARMS)}, not {args.arms!r}")
    settings = load_settings()
    kernel = count_build(settings.cache_dir, args.kernel)
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    arm_specs = specs(kernel.name, args.budget_s, stamp, arms)
    url = args.database_url
    if url is None:
        folder = settings.cache_dir / "bench"
        folder.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{folder / time.strftime('window-%Y%m%d-%H%M%S.sqlite')}"
    settings = dataclasses.replace(settings, database_url=url)
    console = Console(stderr=True)  # stdout is the JSON
    print(json.dumps(run(settings, kernel, arm_specs, args.budget_s, console), indent=1))


if __name__ == "__main__":
    main()
