"""``farm evidence``: per kernel and scenario, the trials, window entries and damage seen."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from farm.cli.support import open_db


@click.command()
@click.option("--kernel", "kernels", multiple=True, help="only these kernels (default: all)")
@click.option("--json", "as_json", is_flag=True, help="print the rows as JSON")
@click.option(
    "--markdown",
    "markdown_out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="also write the table as Markdown to this file (e.g. docs/evidence.md)",
)
@click.pass_context
def evidence(
    ctx: click.Context, kernels: tuple[str, ...], as_json: bool, markdown_out: Path | None
) -> None:
    """Does a kernel damage shmem accounting or user data? One row per kernel x scenario.

    Damage findings come with the token that reproduces them; where none was
    seen, the 95 % upper bound on damage per window entry (rule of three).
    """
    from farm.control import evidence as ev

    with open_db(ctx) as sessions, sessions() as session:
        rows = ev.evidence(session, kernels)
    if markdown_out is not None:
        command = "farm evidence" + "".join(f" --kernel {k}" for k in kernels)
        markdown_out.write_text(ev.markdown(rows, f"{command} --markdown {markdown_out}"))
    if as_json:
        click.echo(json.dumps([r.to_json() for r in rows], indent=2))
        return
    table = Table(title="evidence: lasting damage per kernel and scenario")
    for column in ("kernel", "scenario", "trials", "window (skipped)", "proxy", "damage"):
        table.add_column(column)
    table.add_column("95% bound / entry", justify="right")
    for r in rows:
        window = "—" if r.window is None else f"{r.window} ({r.skipped or 0})"
        damage = "\n".join(
            f"[red]{escape(d.title)}[/] ×{d.trials} {escape(d.token)}" for d in r.damage.values()
        )
        bound = r.bound_per_entry()
        table.add_row(
            escape(r.kernel),
            r.scenario,
            str(r.trials),
            window,
            str(r.proxy),
            damage or "none",
            "—" if bound is None else f"{bound:.2g}",
        )
    Console().print(table)
