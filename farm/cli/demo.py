"""``farm demo``: a short real campaign on the embedded default."""

from __future__ import annotations

import json
import sys

import click
from rich.console import Console

from farm.cli.support import FarmError, settings_from


@click.command()
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
