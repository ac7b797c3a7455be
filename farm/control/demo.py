"""``farm demo``: a short real campaign on the embedded default.

SQLite in the cache folder, a Redis that needs no set-up (``farm.control.broker``),
a local Celery worker started and stopped here, a real TCG NUMA guest on the
installed Debian kernel. The campaign runs through the production path:
scheduler, Celery batch, worker, guest agent, validated result, verdict,
recorder.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from farm.artifacts.guest_image import build_initramfs
from farm.artifacts.kernels import installed_kernel
from farm.control import campaigns
from farm.control.local import check_hypervisor, run_locally
from farm.settings import Settings
from farm.store.db import ensure_kernel, make_engine, session_factory, upgrade


@dataclass
class DemoSummary:
    trials: int
    kernel: str
    verdicts: dict[str, int]
    boots: int
    numa_nodes: list[int]
    setup_seconds: float
    boot_seconds: float
    trial_seconds: float
    median_trial_seconds: float | None
    seconds: float
    tokens: list[str] = field(default_factory=list)
    campaign: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "trials": self.trials,
            "verdicts": self.verdicts,
            "kernel": self.kernel,
            "boots": self.boots,
            "seconds": round(self.seconds, 1),
            "numa_nodes": sorted(set(self.numa_nodes)),
            "setup_seconds": round(self.setup_seconds, 1),
            "boot_seconds": round(self.boot_seconds, 1),
            "trial_seconds": round(self.trial_seconds, 1),
            "median_trial_seconds": self.median_trial_seconds,
            "campaign": self.campaign,
            "tokens": self.tokens,
        }


def run_demo(settings: Settings, trials: int, console: Console) -> DemoSummary:
    started = time.monotonic()
    with console.status("setting up: libvirtd, guest image, database, kernel"):
        check_hypervisor(settings)
        build_initramfs(settings.cache_dir)
        upgrade(settings.database_url)
        kernel = installed_kernel()
        engine = make_engine(settings.database_url)
        sessions = session_factory(engine)
        name = f"demo-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
        with sessions.begin() as session:
            ensure_kernel(
                session, kernel.name, kernel.release, str(kernel.path), kernel.sha256, kernel.source
            )
            spec = campaigns.parse_spec(
                {
                    "name": name,
                    "kind": "demo",
                    "kernels": [kernel.name],
                    "concurrency": trials,
                    "budget": {"trials": trials},
                },
                "demo campaign",
            )
            campaigns.transition(campaigns.create(session, spec), "running")

    setup_seconds = time.monotonic() - started
    recorded = run_locally(settings, sessions, [kernel.name], trials, console)
    results = [result for result, _ in recorded]
    verdicts = Counter(verdict for _, verdict in recorded)
    engine.dispose()

    booted = [r for r in results if r.booted and r.guest]
    boot_seconds = sum(r.guest.boot_seconds for r in booted if r.guest)
    elapsed = [r.elapsed_ms / 1000 for r in results if r.elapsed_ms is not None]
    total = time.monotonic() - started
    return DemoSummary(
        trials=len(results),
        kernel=kernel.name,
        verdicts=dict(sorted(verdicts.items())),
        boots=len(booted),
        numa_nodes=[r.guest.numa_nodes for r in results if r.guest],
        setup_seconds=setup_seconds,
        boot_seconds=boot_seconds,
        trial_seconds=max(0.0, total - setup_seconds - boot_seconds),
        median_trial_seconds=round(statistics.median(elapsed), 2) if elapsed else None,
        seconds=total,
        tokens=[r.token for r in results],
        campaign=name,
    )


def summary_table(summary: DemoSummary) -> Table:
    table = Table(title=f"demo campaign {summary.campaign} on {summary.kernel}")
    table.add_column("verdict")
    table.add_column("trials", justify="right")
    for verdict, count in summary.verdicts.items():
        table.add_row(verdict, str(count))
    table.add_section()
    table.add_row("guest boots", str(summary.boots))
    table.add_row("NUMA nodes seen", ", ".join(str(n) for n in sorted(set(summary.numa_nodes))))
    table.add_row("median trial seconds", str(summary.median_trial_seconds))
    table.add_row(
        "wall seconds (set-up / boot / trials)",
        f"{summary.seconds:.1f} ({summary.setup_seconds:.1f} / {summary.boot_seconds:.1f} / "
        f"{summary.trial_seconds:.1f})",
    )
    return table
