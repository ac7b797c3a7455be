"""``farm report FINDING``: a finding as plain text for a mailing list (or JSON)."""

from __future__ import annotations

import json

import click

from farm.cli.support import FarmError, open_db


@click.command("report")
@click.argument("finding", type=int)
@click.option(
    "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True
)
@click.pass_context
def report_command(ctx: click.Context, finding: int, fmt: str) -> None:
    """FINDING (its number) as a syzbot-style report in 80 columns: title, kernels with first
    and last seen, reproducibility with its interval, console excerpt, seed token, the `farm
    reproduce` command and how to build the standalone reproducer. The finding's web page
    shows the same text."""
    from farm.web.report import finding_report, render_text

    with open_db(ctx) as sessions, sessions() as session:
        report = finding_report(session, finding)
    if report is None:
        raise FarmError(f"no finding {finding}: `farm web` lists them, or /api/findings")
    if fmt == "json":
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        click.echo(render_text(report), nl=False)
