"""Take up kernels registered after the worker started, without a restart.

``farm worker`` without ``--kernel`` serves every kernel in its cache. Kernels
fetched, added or built later would otherwise wait for a restart, and their
campaigns would stall (the scheduler says "no live worker serves kernel K").
This consumer bootstep rescans the cache every ``--kernel-scan-s`` seconds
and starts consuming the queues of new kernels (``Consumer.add_task_queue``);
the scheduler's ``active_queues`` broadcast then sees them. It never stops
consuming a queue: a kernel removed from the cache is refused per trial, with
an infra error, by the task itself.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import click
from celery import Celery, bootsteps

from farm.settings import load_settings
from workers.host import can_limit_cpu, local_kernel_names, queues_for

log = logging.getLogger(__name__)

SCAN_OPTION = "--kernel-scan-s"


class KernelWatch(bootsteps.StartStopStep):
    """Consumer step: poll the kernel cache and add the queues of new kernels."""

    requires: ClassVar[set[str]] = {"celery.worker.consumer.tasks:Tasks"}

    def __init__(self, parent: Any, kernel_scan_s: float | None = None, **options: Any) -> None:
        super().__init__(parent, **options)
        self.every = float(kernel_scan_s or 0)
        self.timer_ref: Any = None

    def include_if(self, parent: Any) -> bool:
        return self.every > 0

    def start(self, c: Any) -> None:
        self.timer_ref = c.timer.call_repeatedly(self.every, self.scan, (c,), priority=10)

    def stop(self, c: Any) -> None:
        if self.timer_ref is not None:
            self.timer_ref.cancel()
            self.timer_ref = None

    def scan(self, c: Any) -> list[str]:
        """Consume every queue of a cached kernel not consumed yet; the queues added."""
        try:
            names = local_kernel_names(load_settings().cache_dir)
        except Exception:  # a half-written manifest must not kill the consumer loop
            log.exception("kernel scan failed; trying again in %.0f s", self.every)
            return []
        consumed = {q.name for q in c.task_consumer.queues}
        added = [q for q in queues_for(names, cpu_control=can_limit_cpu()) if q not in consumed]
        for queue in added:
            c.add_task_queue(queue)
            log.info("new kernel in the cache: consuming %s", queue)
        return added


def install(app: Celery) -> None:
    """Register the step and its worker option (``celery worker --kernel-scan-s N``)."""
    app.user_options["worker"].add(
        click.Option(
            [SCAN_OPTION],
            type=float,
            default=0.0,
            help="rescan the kernel cache every N seconds and serve new kernels (0: never)",
        )
    )
    app.steps["consumer"].add(KernelWatch)
