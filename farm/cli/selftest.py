"""``farm selftest``: the positive and negative controls, as a command."""

from __future__ import annotations

import json
import time

import click
from rich.console import Console
from rich.table import Table

from farm.cli.support import FarmError, open_db, settings_from


@click.command()
@click.option("--trials", default=40, show_default=True, help="budget of each control")
@click.option("--positive", help="fix-reverted, WARN-instrumented kernel (default: newest built)")
@click.option("--negative", help="stock kernel (default: the installed Debian kernel)")
@click.option("--json", "as_json", is_flag=True, help="print a JSON summary as the last line")
@click.pass_context
def selftest(
    ctx: click.Context, trials: int, positive: str | None, negative: str | None, as_json: bool
) -> None:
    """Positive and negative controls: exit 0 when the farm finds the bug only where it is."""
    from farm.artifacts.kernels import installed_kernel
    from farm.control.local import check_hypervisor
    from farm.control.selftest import ControlError, default_positive, passed, run_controls

    settings = settings_from(ctx)
    check_hypervisor(settings)
    positive = positive or default_positive(settings.cache_dir)
    if positive is None:
        raise FarmError(
            "no positive-control kernel: build one with "
            "`farm kernels build --source 6.1 --instrument warn --revert-fix`"
        )
    negative = negative or installed_kernel().name
    console = Console(stderr=as_json)
    started = time.monotonic()
    with open_db(ctx) as sessions:
        try:
            pos, neg = run_controls(settings, sessions, positive, negative, trials, console)
        except ControlError as exc:
            raise FarmError(str(exc)) from exc
    ok = passed(pos, neg)
    table = Table(title="farm selftest")
    for column in ("control", "kernel", "trials", "first hit at", "hits", "findings"):
        table.add_column(column)
    for label, c in (("positive", pos), ("negative", neg)):
        findings = ", ".join(f"{t} x{n}" for t, n in c.findings.items()) or "none"
        first = str(c.first_hit or "—")
        table.add_row(label, c.kernel, str(c.trials), first, str(c.hits), findings)
    console.print(table)
    console.print("[bold green]PASS[/]" if ok else "[bold red]FAIL[/]")
    if as_json:
        summary = {
            "passed": ok,
            "positive": pos.to_json(),
            "negative": neg.to_json(),
            "seconds": round(time.monotonic() - started, 1),
        }
        click.echo(json.dumps(summary))
    ctx.exit(0 if ok else 1)
