"""``farm worker``: a Celery worker of the data plane on this host."""

from __future__ import annotations

import os
import sys

import click

from farm.cli.support import FarmError, err, settings_from

KERNEL_SCAN_S = 10.0  # how soon a newly registered kernel is served


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--concurrency", "-c", default=1, show_default=True, help="worker processes (guests)")
@click.option(
    "--kernel", "kernels", multiple=True, help="kernel to serve (default: every local kernel)"
)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def worker(
    ctx: click.Context, concurrency: int, kernels: tuple[str, ...], celery_args: tuple[str, ...]
) -> None:
    """Run a Celery worker that runs trials in libvirt guests (needs no database).

    It consumes one queue per kernel it has, plus the ``.cpu`` twin when this
    host can throttle vCPUs (cgroup cpu controller); the scheduler routes
    trials that need it there only. Without ``--kernel`` it serves every kernel
    of its cache, and takes up kernels fetched, added or built later within
    seconds, without a restart.
    """
    from farm.transport import worker_argv
    from workers.host import can_limit_cpu, local_kernel_names, queues_for

    settings = settings_from(ctx)
    names = list(kernels) or local_kernel_names(settings.cache_dir)
    if not names:
        raise FarmError("no kernels on this host: `farm kernels fetch debian:bookworm` first")
    from farm.celeryconfig import TRIAL_HARD_LIMIT_S
    from farm.timing import BudgetError, check_worker_budget

    try:
        if settings.executor != "synthetic":  # no guests, no boot: nothing to budget
            check_worker_budget(
                boot_s=settings.boot_deadline_s,
                floor_s=settings.trial_deadline_s,
                visibility_s=settings.visibility_timeout_s,
                task_hard_limit_s=TRIAL_HARD_LIMIT_S,
            )
    except BudgetError as exc:
        raise FarmError(str(exc)) from exc
    cpu = can_limit_cpu()
    err.print(
        f"serving kernels: {', '.join(names)}; vCPU bandwidth control: "
        f"{'yes' if cpu else 'no (no cgroup cpu controller): trials that need it go elsewhere'}"
    )
    # serving every local kernel: take up kernels registered later (workers/kernel_watch.py)
    scan = [] if kernels else ["--kernel-scan-s", str(KERNEL_SCAN_S)]
    argv = worker_argv(
        sys.executable,
        queues_for(names, cpu_control=cpu),
        concurrency=concurrency,
        extra=[*scan, *celery_args],
    )
    os.execv(sys.executable, argv)
