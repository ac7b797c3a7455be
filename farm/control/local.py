"""Run campaigns on this machine: a broker if none answers, a local worker, the scheduler.

``farm demo``, ``farm reproduce`` and ``farm selftest`` all do this; a farm
with its own workers and scheduler does not need it (``--enqueue`` leaves
the campaign to them).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy.orm import Session, sessionmaker

from farm.control.broker import local_redis
from farm.control.localworker import LocalWorker
from farm.control.scheduler import Scheduler
from farm.protocol import TrialResult
from farm.settings import Settings
from farm.transport import make_app
from workers.connection import open_connection
from workers.host import worker_queues


def check_hypervisor(settings: Settings) -> None:
    """Fail early, naming the fix, if libvirtd is not there."""
    open_connection(settings.libvirt_uri).close()


def run_locally(
    settings: Settings,
    sessions: sessionmaker[Session],
    kernels: list[str],
    trials: int | None,
    console: Console,
    *,
    label: str = "trials",
    on_record: Callable[[TrialResult, str], None] = lambda r, v: None,
    stop_early: Callable[[], bool] = lambda: False,
    describe: Callable[[TrialResult, str], str] = lambda r, v: f"{r.trial_id}: {v}",
) -> list[tuple[TrialResult, str]]:
    """Schedule running campaigns with a worker started here until ``trials`` are recorded
    (None: until ``stop_early``, e.g. a wall budget); ``describe`` is the progress line."""
    app = make_app(settings)
    recorded: list[tuple[TrialResult, str]] = []
    with local_redis(settings.broker_url), LocalWorker(settings, worker_queues(kernels)) as worker:
        columns = (
            TextColumn(f"[bold]{label}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
        )
        with Progress(*columns, console=console) as progress:
            bar = progress.add_task("booting the guest (TCG: ~10-15 s)", total=trials)

            def record(result: TrialResult, verdict: str) -> None:
                recorded.append((result, verdict))
                on_record(result, verdict)
                progress.update(bar, advance=1, description=describe(result, verdict))

            scheduler = Scheduler(
                app,
                sessions,
                batch_size=1,
                deadline_s=settings.trial_deadline_s,
                boot_s=settings.boot_deadline_s,
                on_record=record,
            )
            give_up = (
                time.monotonic() + trials * (settings.trial_deadline_s + 60) + 300
                if trials is not None
                else math.inf
            )

            def finished() -> bool:
                if (trials is not None and len(recorded) >= trials) or stop_early():
                    return True
                if not worker.alive():
                    raise RuntimeError(f"the local worker died:\n{worker.log_tail()}")
                return time.monotonic() > give_up

            scheduler.run(stop=finished)
            scheduler.tick()  # campaigns whose last trial just landed become done
    return recorded
