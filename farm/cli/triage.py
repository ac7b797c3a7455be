"""`farm triage`: kernel console reports from the command line.

Why: other tools (the corpus benchmark, the farm's own scripts) need titles in bulk as JSON
lines, and a person reading a failed trial wants the reports of a console log at a glance.
Exit codes follow tuxrun: 0 nothing found, 1 reports found, 2 input trouble.
"""

from __future__ import annotations

import base64
import binascii
import json
import sys
from typing import IO, Any

import click
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from farm.triage import engine

EXIT_NONE = 0
EXIT_FOUND = 1
EXIT_INPUT = 2


class InputError(click.ClickException):
    """Bad input: message on stderr, exit code 2 (click's own usage errors use 2 as well)."""

    exit_code = EXIT_INPUT


@click.group(name="triage")
def triage() -> None:
    """Kernel console triage: titles and reports, syzkaller-style."""


def _record_log(record: dict[str, Any], where: str) -> bytes:
    """The record's exact log bytes: `log_base64` when present, else `log` as UTF-8."""
    encoded = record.get("log_base64")
    if encoded is not None:
        if not isinstance(encoded, str):
            raise InputError(f"{where}: 'log_base64' must be a string")
        try:
            return base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InputError(f"{where}: 'log_base64' is not valid base64 ({exc})") from None
    log = record.get("log")
    if not isinstance(log, str):
        raise InputError(f"{where}: a record needs a string 'log' (or 'log_base64')")
    return log.encode("utf-8", "surrogateescape")


@triage.command("titles")
@click.option(
    "--jsonl",
    "source",
    required=True,
    type=click.File("rb"),
    help="JSON lines with 'id' and 'log' (or 'log_base64': exact bytes, preferred); - is stdin.",
)
def titles(source: IO[bytes]) -> None:
    """Print one JSON line per record, in input order: {"id", "title", "corrupted"}.

    "title" is null when the log holds no kernel report. A malformed line stops the run
    with an error naming its line number and exit code 2; lines already printed stay.
    Blank lines are skipped.
    """
    out = sys.stdout
    for number, raw in enumerate(source, start=1):
        if not raw.strip():
            continue
        where = f"line {number}"
        try:
            record = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            out.flush()
            raise InputError(f"{where}: not valid JSON ({exc})") from None
        if not isinstance(record, dict) or "id" not in record:
            out.flush()
            raise InputError(f"{where}: expected a JSON object with an 'id'")
        try:
            log = _record_log(record, where)
        except InputError:
            out.flush()
            raise
        report = engine.title(log)
        result = {
            "id": record["id"],
            "title": report.title if report else None,
            "corrupted": report.corrupted if report else False,
        }
        out.write(json.dumps(result, ensure_ascii=False) + "\n")
    out.flush()


@triage.command("console")
@click.argument("path", type=click.File("rb"))
@click.option(
    "--max-lines", default=60, show_default=True, help="Report lines shown per report (0: all)."
)
def console_cmd(path: IO[bytes], max_lines: int) -> None:
    """Show the kernel reports in a console log (PATH, or - for stdin).

    Exit status: 0 when the log holds no kernel report, 1 when it holds at least one,
    2 when the input cannot be read.
    """
    try:
        data = path.read(engine.MAX_LOG_BYTES)  # the parser reads no further anyway
    except OSError as exc:
        raise InputError(f"cannot read {path.name}: {exc}") from None
    reports = engine.parse(data)
    out = Console()
    if not reports:
        out.print("no kernel reports")
        sys.exit(EXIT_NONE)
    summary = Table(title=f"{len(reports)} kernel report(s) in {path.name}", show_lines=False)
    for column in ("#", "title", "kind", "guilty frame", "corrupted", "fatal", "bytes"):
        summary.add_column(column)
    for n, report in enumerate(reports, start=1):
        summary.add_row(
            str(n),
            Text(report.title),
            report.kind,
            Text(report.frame or "-"),
            "yes" if report.corrupted else "no",
            "yes" if report.fatal else "no",
            f"{report.start}-{report.end}",
        )
    out.print(summary)
    for n, report in enumerate(reports, start=1):
        lines = report.text.rstrip("\n").split("\n")
        if max_lines and len(lines) > max_lines:
            lines = [*lines[:max_lines], f"... ({len(lines) - max_lines} more lines)"]
        style = "red" if report.fatal else ("yellow" if report.corrupted else "cyan")
        out.print(
            Panel(Text("\n".join(lines)), title=Text(f"{n}. {report.title}"), border_style=style)
        )
    sys.exit(EXIT_FOUND)


@triage.command("rerun")
@click.pass_context
def rerun_cmd(ctx: click.Context) -> None:
    """Re-judge every stored trial with the current parser and rebuild the findings.

    Reads each trial's stored result and console, so a better parser improves
    old data. Finding ids stay stable; findings left without trials become
    "gone". On PostgreSQL, recording of new findings waits while this runs.
    """
    from rich.progress import Progress

    from farm.cli.support import open_db
    from farm.store.findings import rerun

    with open_db(ctx) as sessions, Progress(console=Console(stderr=True)) as progress:
        bar = progress.add_task("re-judging trials", total=None)
        summary = rerun(
            sessions, progress=lambda done, total: progress.update(bar, completed=done, total=total)
        )
    click.echo(summary.describe())
