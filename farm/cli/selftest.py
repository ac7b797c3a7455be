"""``farm selftest``: a fair control, fix reverted against fix in, as a command."""

from __future__ import annotations

import json
import time

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from farm.cli.support import FarmError, open_db, settings_from


@click.command()
@click.option("--trials", default=60, show_default=True, help="budget of each control")
@click.option(
    "--positive", help="the fix-reverted build (default: newest one with a fair twin built)"
)
@click.option("--negative", help="its twin without --revert-fix (same source, instrumentation)")
@click.option("--json", "as_json", is_flag=True, help="print a JSON summary as the last line")
@click.pass_context
def selftest(
    ctx: click.Context, trials: int, positive: str | None, negative: str | None, as_json: bool
) -> None:
    """Does an oracle of lasting damage tell the bug from its fix? Exit 0 only if so.

    Both kernels must come from one source with one instrumentation, differing
    only by --revert-fix. Exit 1 when only the window signal separates them
    (said plainly) or nothing does, 2 when the pair is unfair or missing.
    """
    from farm.control.local import check_hypervisor
    from farm.control.selftest import (
        ControlError,
        Outcome,
        cached_names,
        default_pair,
        fair_pair,
        outcome,
        run_controls,
    )

    settings = settings_from(ctx)
    if positive is None or negative is None:
        pair = default_pair(cached_names(settings.cache_dir))
        if pair is None:
            raise FarmError(
                "no fair pair of kernels: build both with "
                "`farm kernels build --source 6.1 --instrument count --revert-fix` and "
                "`farm kernels build --source 6.1 --instrument count`"
            )
        positive, negative = positive or pair[0], negative or pair[1]
    try:
        fair_pair(positive, negative)
    except ControlError as exc:
        raise FarmError(str(exc)) from exc
    check_hypervisor(settings)
    console = Console(stderr=as_json)
    started = time.monotonic()
    with open_db(ctx) as sessions:
        try:
            pos, neg = run_controls(settings, sessions, positive, negative, trials, console)
        except ControlError as exc:
            raise FarmError(str(exc)) from exc
    result, why = outcome(pos, neg)
    table = Table(title="farm selftest: fix reverted vs fix in, one source, one instrumentation")
    for column in ("control", "kernel", "trials", "window (skipped)", "damage"):
        table.add_column(column)
    for label, c in (("fix reverted", pos), ("fix in", neg)):
        damage = ", ".join(f"{t} ×{n}" for t, n in c.damage.items()) or "none"
        window = f"{c.window_entries} ({c.window_skipped})"
        table.add_row(label, c.kernel, str(c.trials), window, escape(damage))
    console.print(table)
    style = {Outcome.PASS: "bold green", Outcome.WINDOW_ONLY: "bold yellow"}.get(result, "bold red")
    console.print(f"[{style}]{result.upper()}[/]: {escape(why)}")
    if as_json:
        summary = {
            "outcome": result.value,
            "passed": result is Outcome.PASS,
            "why": why,
            "positive": pos.to_json(),
            "negative": neg.to_json(),
            "seconds": round(time.monotonic() - started, 1),
        }
        click.echo(json.dumps(summary))
    ctx.exit(0 if result is Outcome.PASS else 1)
