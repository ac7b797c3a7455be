"""A finding as a mailing-list report: syzbot-style plain text in 80 columns, or JSON.

One renderer for ``farm report`` and the finding page's "report to copy", so
what a developer pastes into an email is what the page shows. It is built
from the same query as the page (farm.web.queries.finding_detail). Guest text
(titles, console) has its control characters made visible, never passed on.
"""

from __future__ import annotations

import shlex
import textwrap
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from farm.artifacts.standalone import BUILD_LINE
from farm.control.reproduce import wilson
from farm.triage.verdict import PROGRAM_PREFIX
from farm.web import queries
from farm.web.schemas import FindingDetail
from farm.web.text import printable

WIDTH = 80
MAX_CONSOLE_LINES = 60
DEFAULT_RUNS = 10


@dataclass(frozen=True)
class KernelSeen:
    kernel: str
    count: int
    first_seen: str | None
    last_seen: str | None


@dataclass(frozen=True)
class FindingReport:
    id: int
    title: str
    kind: str
    status: str
    count: int
    first_seen: str
    last_seen: str
    kernels: list[KernelSeen]
    hits: int | None  # None: never measured by a reproduction campaign
    runs: int | None
    ci95: tuple[float, float] | None
    reliable: bool | None
    token: str | None
    console: list[str] = field(default_factory=list)
    reproduce_command: str | None = None
    export_commands: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ci95"] = list(self.ci95) if self.ci95 else None
        return data


def _when(value: datetime | None) -> str | None:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else None


def finding_report(session: Session, finding_id: int) -> FindingReport | None:
    """The report of finding ``finding_id``, or None if there is no such finding."""
    detail = queries.finding_detail(session, finding_id)
    return None if detail is None else report_from_detail(detail)


def report_from_detail(detail: FindingDetail) -> FindingReport:
    """The report of a finding the page already loaded."""
    kernels = [
        KernelSeen(printable(k.kernel), k.count, _when(k.first_seen), _when(k.last_seen))
        for k in detail.per_kernel
    ]
    repro = detail.reproducibility
    hits = runs = None
    ci = None
    if repro is not None and repro.runs > 0:
        hits, runs = repro.hits, repro.runs
        ci = tuple(round(x, 4) for x in wilson(hits, runs))
    token = detail.best_seed
    kernel_args = " ".join(f"--kernel {shlex.quote(k.kernel)}" for k in detail.per_kernel[:3])
    reproduce = None
    export = []
    if token and token.startswith(PROGRAM_PREFIX):  # a reported C program: it is the reproducer
        source = shlex.quote(token.removeprefix(PROGRAM_PREFIX).rsplit(":", 1)[0])
        reproduce = f"farm reproduce --program {source} {kernel_args} --runs {DEFAULT_RUNS}"
    elif token:
        quoted = shlex.quote(token)
        reproduce = f"farm reproduce {quoted} {kernel_args} --runs {DEFAULT_RUNS}".replace(
            "  ", " "
        )
        export = [
            f"farm export {quoted} --out repro",
            f"cd repro && {BUILD_LINE}",
            "# needs two NUMA nodes (README.md has a qemu -numa command line):",
            "sudo ./run.sh",
        ]
    console = printable(detail.console_excerpt or "").splitlines()[-MAX_CONSOLE_LINES:]
    return FindingReport(
        id=detail.id,
        title=printable(detail.title),
        kind=detail.kind,
        status=detail.status,
        count=detail.count,
        first_seen=_when(detail.first_seen) or "?",
        last_seen=_when(detail.last_seen) or "?",
        kernels=kernels,
        hits=hits,
        runs=runs,
        ci95=ci,  # type: ignore[arg-type]
        reliable=repro.reliable if repro is not None else None,
        token=printable(token) if token else None,
        console=console,
        reproduce_command=reproduce,
        export_commands=export,
    )


def _wrap(text: str, indent: str = "", width: int = WIDTH) -> list[str]:
    return textwrap.wrap(
        text, width, initial_indent=indent, subsequent_indent=indent,
        break_long_words=True, break_on_hyphens=False,
    ) or [indent.rstrip()]  # fmt: skip


def _hard_wrap(line: str, indent: str = "  ", width: int = WIDTH) -> list[str]:
    """A console line cut (not reflowed) into 80 columns; continuations marked with '+'."""
    room = width - len(indent)
    if len(line) <= room:
        return [(indent + line).rstrip()]
    out = [indent + line[:room]]
    rest = line[room:]
    while rest:
        out.append(indent[:-1] + "+" + rest[:room])
        rest = rest[room:]
    return out


def _command(cmd: str, indent: str = "  ", width: int = WIDTH) -> list[str]:
    """A shell command in ``width`` columns: long ones continue with a backslash, so a
    copied command still runs (words are never split)."""
    lines: list[str] = []
    current = indent
    for word in cmd.split(" "):
        candidate = word if current == indent else " " + word
        if len(current) + len(candidate) > width - 2 and current.strip():
            lines.append(current + " \\")
            current = indent + "  " + word
        else:
            current += candidate
    lines.append(current)
    return lines


def render_text(r: FindingReport, width: int = WIDTH) -> str:
    """The report as plain text, no line longer than ``width`` columns."""
    lines: list[str] = [*_wrap(r.title, width=width), ""]
    lines += _wrap(
        f"zapfarm found this bug: {r.kind}, finding #{r.id} ({r.status}), seen in "
        f"{r.count} trial{'s' if r.count != 1 else ''} from {r.first_seen} to {r.last_seen}.",
        width=width,
    )
    lines += ["", "Kernels:"]
    name_w = min(40, max((len(k.kernel) for k in r.kernels), default=6))
    for k in r.kernels:
        row = f"{k.kernel:<{name_w}} {k.count:>6}  first {k.first_seen or '?'}"
        lines += _wrap(row, "  ", width)
        lines += _wrap(f"last {k.last_seen or '?'}", "  " + " " * (name_w + 9), width)
    if not r.kernels:
        lines.append("  (no counts)")
    lines += ["", "Reproducibility:"]
    if r.runs:
        lo, hi = r.ci95 or (0.0, 1.0)
        verdict = "reliable" if r.reliable else "flaky (reliable needs half the runs)"
        lines += _wrap(
            f"{r.hits} of {r.runs} runs hit it ({100 * (r.hits or 0) / r.runs:.0f}%, 95% "
            f"Wilson interval {100 * lo:.0f}%-{100 * hi:.0f}%), {verdict}.",
            "  ",
            width,
        )
    else:
        lines += _wrap("not measured yet: run the `farm reproduce` command below.", "  ", width)
    lines += ["", "Console excerpt:"]
    if r.console:
        for line in r.console:
            lines += _hard_wrap(line, "  ", width)
    else:
        lines.append("  (no console kept)")
    lines += ["", "Seed token:"]
    lines += _wrap(r.token or "(none kept)", "  ", width)
    if r.reproduce_command:
        lines += ["", "Reproduce with the farm:"]
        lines += _command(r.reproduce_command, "  ", width)
    if r.export_commands:
        lines += ["", "Standalone reproducer (C, no farm needed):"]
        for command in r.export_commands:
            lines += _command(command, "  ", width)
    return "\n".join(lines) + "\n"
