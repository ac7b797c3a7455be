"""The ``farm`` command line.

Exit codes follow tuxrun: 0 success, 1 the farm found something (or a check
failed), 2 infrastructure trouble or bad input, with a message naming the fix.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click
from rich.console import Console

from farm.cli.support import FarmError, err, settings_from


@click.group()
@click.option(
    "--config",
    type=click.Path(path_type=Path),
    help="farm.toml to read (default: $FARM_CONFIG, ./farm.toml)",
)
@click.pass_context
def main(ctx: click.Context, config: Path | None) -> None:
    """zapfarm: fuzz the shmem hole-punch vs. page-migration race on many kernels."""
    ctx.ensure_object(dict)
    ctx.obj["config"] = config


@main.group()
def guest() -> None:
    """The guest image (initramfs with the agent and the trial program)."""


@guest.command("build")
@click.pass_context
def guest_build(ctx: click.Context) -> None:
    """Build the gzip'd cpio initramfs (content-addressed: instant when unchanged)."""
    from farm.artifacts.guest_image import GuestImageError, build_initramfs

    settings = settings_from(ctx)
    try:
        with err.status("building the guest initramfs"):
            path = build_initramfs(settings.cache_dir)
    except GuestImageError as exc:
        raise FarmError(str(exc)) from exc
    click.echo(str(path))


@main.command()
@click.option("--trials", "-n", default=5, show_default=True, type=click.IntRange(1, 1000))
@click.option("--json", "as_json", is_flag=True, help="print a JSON summary as the last line")
@click.pass_context
def demo(ctx: click.Context, trials: int, as_json: bool) -> None:
    """Run a short real campaign: SQLite, a local worker, a TCG NUMA guest."""
    from farm.artifacts.guest_image import GuestImageError
    from farm.artifacts.kernels import KernelNotFound
    from farm.control.broker import BrokerError
    from farm.control.demo import run_demo, summary_table
    from farm.store.db import DatabaseError
    from workers.connection import HypervisorError

    settings = settings_from(ctx)
    console = Console(stderr=as_json)
    try:
        summary = run_demo(settings, trials, console)
    except (BrokerError, DatabaseError, GuestImageError, KernelNotFound, HypervisorError) as exc:
        raise FarmError(str(exc)) from exc
    console.print(summary_table(summary))
    if as_json:
        click.echo(json.dumps(summary.to_json()))
    if summary.verdicts.get("infra-error"):
        sys.exit(2)


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
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
    trials that need it there only.
    """
    from workers.host import can_limit_cpu, local_kernel_names, queues_for

    settings = settings_from(ctx)
    names = list(kernels) or local_kernel_names(settings.cache_dir)
    if not names:
        raise FarmError("no kernels on this host: `farm kernels fetch debian:bookworm` first")
    cpu = can_limit_cpu()
    err.print(
        f"serving kernels: {', '.join(names)}; vCPU bandwidth control: "
        f"{'yes' if cpu else 'no (no cgroup cpu controller): trials that need it go elsewhere'}"
    )
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.celery_app",
        "worker",
        "--concurrency",
        str(concurrency),
        "--queues",
        ",".join(queues_for(names, cpu_control=cpu)),
        "--loglevel",
        "INFO",
        *celery_args,
    ]
    os.execv(sys.executable, argv)


@main.group()
def db() -> None:
    """The results database."""


@db.command("upgrade")
@click.pass_context
def db_upgrade(ctx: click.Context) -> None:
    """Migrate the database to the newest schema (Alembic)."""
    from farm.settings import redact_url
    from farm.store.db import DatabaseError, upgrade

    settings = settings_from(ctx)
    try:
        upgrade(settings.database_url)
    except DatabaseError as exc:
        raise FarmError(str(exc)) from exc
    click.echo(f"database at {redact_url(settings.database_url)} is at the newest schema")


def _add_groups() -> None:
    from farm.cli.campaign import campaign, scheduler

    main.add_command(campaign)
    main.add_command(scheduler)
    from farm.cli.reproduce import minimize_command, reproduce

    main.add_command(reproduce)
    main.add_command(minimize_command)
    from farm.cli.web import web

    main.add_command(web)
    from farm.control.selftest import selftest

    main.add_command(selftest)
    from farm.cli.kernels import kernels

    main.add_command(kernels)
    try:
        from farm.cli.triage import triage
    except ModuleNotFoundError:  # TEMP until commands land
        return
    main.add_command(triage)


_add_groups()


if __name__ == "__main__":
    main()
