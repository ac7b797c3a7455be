"""A trial's verdict, from its outcome, its five oracles and its console.

Kinds, most severe first (a trial gets the first that applies):

- ``infra-error``: boot failure, libvirt trouble, a libvirtd restart (the
  worker asks libvirt about the domain before blaming the kernel). Never a
  finding; the scheduler retries it a bounded number of times.
- ``invalid``: the trial could not test anything (fewer than 2 NUMA nodes,
  the trial program failed or printed garbage, the memfd VMA was not found,
  or it was merely slow: still making progress at its deadline).
  Pages left unpunched make the oracles inapplicable (invalid). A fatal
  program error is invalid only when the oracles it still measured are
  clean; non-fatal warnings (a thread not pinned) never replace the oracles.
- ``guest-crash``: the guest died or panicked.
- ``hang``: the trial stopped making progress (no heartbeat and no console
  from the guest, or a trial program whose CPU time stood still).
- ``kernel-report``: a kernel report on the trial's console (the teardown
  oracle's ``BUG: Bad rss-counter state`` is one).
- ``program-crash``: the trial program died of a fault signal (SIGSEGV,
  SIGBUS, ...): in a program that only touches its own memory, the visible
  symptom of memory the kernel damaged.
- ``data-mismatch``: a page of the range did not read what POSIX requires after
  the zap (the data oracle). It outranks a single NUMA node and a program
  error: the read happened and the kernel answered wrongly, whether or not
  pages could move (swapped scenarios need no migration at all). A run whose
  data all checked out on one node stays ``invalid``: the race never ran.
- ``smaps-mismatch``: the memfd VMA keeps Rss or Pss_Shmem after every page
  was zapped (private COWed pages, which may legitimately stay, not counted).
- ``counter-mismatch``: RssShmem does not return to its before-populate baseline.
- ``clean``.

The signature of a finding is ``(kind, title)``; titles follow syzkaller's
conventions where the console gives one.

A reported program the farm did not write (``farm reproduce --program``; its
token is ``program:<file>:<sha12>``) has no VMA or counter oracle: it is judged
by its console, the guest's survival, and its exit status and signal
(judge_program), and a program killed by a fault signal is ``program-crash``.
"""

from __future__ import annotations

import signal as signals
from dataclasses import dataclass

from farm.protocol import DataMismatch, ProgramOutput, TrialResult
from farm.triage.engine import Report, parse
from farm.triage.kinds import FINDING_KINDS, KINDS, VerdictKind

__all__ = ["FINDING_KINDS", "KINDS", "Verdict", "VerdictKind", "judge"]


@dataclass(frozen=True)
class Verdict:
    kind: VerdictKind
    title: str | None = None  # the finding's title; None for clean, invalid and infra-error
    detail: str | None = None
    report: Report | None = None

    @property
    def is_finding(self) -> bool:
        return self.kind.finding


PROGRAM_PREFIX = "program:"  # the token of a foreign program's run
FAULT_SIGNALS = frozenset({signals.SIGSEGV, signals.SIGBUS, signals.SIGILL, signals.SIGFPE})


def signal_name(number: int) -> str:
    try:
        return signals.Signals(number).name
    except ValueError:
        return f"signal {number}"


def judge_program(result: TrialResult) -> Verdict:
    """The verdict of one run of a foreign program, from the oracles that apply to it."""
    if result.outcome == "infra-error":
        return Verdict(VerdictKind.INFRA_ERROR, detail=result.error)
    reports = parse(result.console) if result.console else []
    fatal = next((r for r in reports if r.fatal), None)
    if result.outcome == "guest-died" or fatal is not None:
        title = fatal.title if fatal else (reports[0].title if reports else "guest died")
        return Verdict(VerdictKind.GUEST_CRASH, title=title, detail=result.error, report=fatal)
    if reports:  # the splat oracle; the teardown's Bad rss-counter is a report too
        first = reports[0]
        more = f" (+{len(reports) - 1} more reports)" if len(reports) > 1 else ""
        return Verdict(
            VerdictKind.KERNEL_REPORT, title=first.title, detail=first.title + more, report=first
        )
    if result.outcome == "timeout":
        if result.elapsed_ms is None:  # no answer at all: the guest, not the program
            return Verdict(
                VerdictKind.HANG, title="hang: no answer from the guest", detail=result.error
            )
        return Verdict(
            VerdictKind.INVALID,
            detail="the program never exited (killed at its deadline); the kernel reported nothing",
        )
    if result.signal:
        name = signal_name(result.signal)
        if result.signal in FAULT_SIGNALS:
            return Verdict(VerdictKind.PROGRAM_CRASH, title=f"program killed by {name}",
                           detail=f"killed by {name} ({result.signal})")  # fmt: skip
        return Verdict(
            VerdictKind.INVALID,
            detail=f"killed by {name} ({result.signal}), not a fault signal: the program's "
            "own abort() or assert()?",
        )
    if result.outcome != "ok":
        return Verdict(VerdictKind.INVALID, detail=result.error or f"outcome {result.outcome}")
    return Verdict(VerdictKind.CLEAN, detail=f"exit status {result.exit_code}")


def judge(result: TrialResult) -> Verdict:
    """The verdict of one recorded result (pure: ``farm triage rerun`` calls it again)."""
    if result.token.startswith(PROGRAM_PREFIX):
        return judge_program(result)
    if result.outcome == "infra-error":
        return Verdict(VerdictKind.INFRA_ERROR, detail=result.error)
    if result.outcome == "invalid-guest":
        return Verdict(VerdictKind.INVALID, detail=result.error)
    reports = parse(result.console) if result.console else []
    fatal = next((r for r in reports if r.fatal), None)
    if result.outcome == "guest-died" or fatal is not None:
        title = fatal.title if fatal else (reports[0].title if reports else "guest died")
        return Verdict(VerdictKind.GUEST_CRASH, title=title, detail=result.error, report=fatal)
    if result.outcome == "timeout":
        hang = next((r for r in reports if r.kind in ("HANG", "LOCKUP", "RCU_STALL")), None)
        title = hang.title if hang else "hang: no answer from the trial within its deadline"
        return Verdict(VerdictKind.HANG, title=title, detail=result.error, report=hang)
    if reports:
        first = reports[0]
        more = f" (+{len(reports) - 1} more reports)" if len(reports) > 1 else ""
        return Verdict(
            VerdictKind.KERNEL_REPORT, title=first.title, detail=first.title + more, report=first
        )
    if result.outcome == "program-error" and result.signal in FAULT_SIGNALS:
        name = signal_name(result.signal)
        return Verdict(
            VerdictKind.PROGRAM_CRASH,
            title=f"program-crash: zapmigrate killed by {name}",
            detail=result.error or f"the trial program died of {name}",
        )
    if result.outcome != "ok" or result.program is None:
        return Verdict(VerdictKind.INVALID, detail=result.error or f"outcome {result.outcome}")
    program = result.program
    data = data_verdict(program)
    if data is not None:
        return data
    if program.numa_nodes < 2:
        said = f"; trial program: {program.error}" if program.error else ""
        return Verdict(
            VerdictKind.INVALID, detail=f"guest had {program.numa_nodes} NUMA node(s){said}"
        )
    failed = f"trial program: {program.error}" if program.error else None
    beside = _beside(program.error, program.warnings)
    vma = program.vma
    if not vma.found or vma.rss_kb is None:
        return Verdict(
            VerdictKind.INVALID, detail=failed or "the memfd VMA was not found in /proc/self/smaps"
        )
    punch = program.punch
    unpunched = punch.unpunched
    if unpunched is None and punch.errors >= punch.calls:
        unpunched = -1  # an older program: it did not count, but nothing was punched
    if unpunched:
        left = f"{unpunched} page(s)" if unpunched > 0 else "every page"
        return Verdict(
            VerdictKind.INVALID,
            detail=f"{left} left unpunched ({punch.errors} of {punch.calls} punch calls "
            f"failed): the oracles expect every page punched{beside}",
        )
    if vma.file_rss_kb != 0 or (vma.file_pss_kb or 0) != 0:
        cows = f" ({vma.anon_kb} kB of private COWs not counted)" if vma.anon_kb else ""
        return Verdict(
            VerdictKind.SMAPS_MISMATCH,
            title="smaps: memfd VMA keeps pages after punching every page",
            detail=f"Rss {vma.file_rss_kb} kB, Pss_Shmem {vma.file_pss_kb} kB after punch "
            f"(want 0){cows}{beside}",
        )
    rss = program.rss_shmem_kb
    if rss.before is None or rss.punched is None:
        return Verdict(
            VerdictKind.INVALID, detail=failed or "RssShmem missing from /proc/self/status"
        )
    if rss.punched != rss.before:
        return Verdict(
            VerdictKind.COUNTER_MISMATCH,
            title="RssShmem does not return to its baseline after punch",
            detail=f"RssShmem {rss.before} kB before populate, {rss.punched} kB after punch"
            f"{beside}",
        )
    if failed:
        return Verdict(VerdictKind.INVALID, detail=failed)
    return Verdict(VerdictKind.CLEAN, detail=beside.removeprefix("; ") or None)


def _beside(error: str | None, warnings: list[str]) -> str:
    """Program trouble recorded beside an oracle's verdict, never instead of it."""
    notes = ([f"program error: {error}"] if error else []) + [f"warning: {w}" for w in warnings]
    return "".join(f"; {n}" for n in notes)


def data_title(scenario: str, first: DataMismatch) -> str:
    """A data finding's title, naming the damage and the scenario, e.g.
    ``data: private COW page survives truncate (private-truncate)``."""
    op = "truncate" if "truncate" in scenario else "hole punch"
    if first.want in ("sigbus", "zero") and first.got == "cow":
        what = f"private COW page survives {op}"
    elif first.want in ("sigbus", "zero") and first.got == "file":
        what = f"page keeps its data after {op}"
    elif first.want == "cow":
        what = f"private COW page lost by {op}"
    else:
        what = f"page reads {first.got} where {first.want} is due after {op}"
    return f"data: {what} ({scenario})"


def data_verdict(program: ProgramOutput) -> Verdict | None:
    """The data oracle's verdict, or None when every page read as due (or none was read)."""
    data = program.data
    if data is None or data.mismatches == 0:
        return None
    scenario = program.scenario
    pages = "; ".join(
        f"page {m.page} round {m.round} {m.phase}: read {m.got} ({m.word}), want {m.want}"
        for m in data.first
    )
    title = data_title(scenario, data.first[0]) if data.first else f"data: {scenario} mismatch"
    return Verdict(
        VerdictKind.DATA_MISMATCH,
        title=title,
        detail=f"{scenario}: {data.mismatches} of {data.checked} page reads wrong; {pages}",
    )
