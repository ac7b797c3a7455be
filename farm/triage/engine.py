"""Kernel console parser: find the kernel reports in a console log and title them.

Why this shape: the farm's splat and teardown oracles must turn whatever a guest kernel
prints into stable titles that deduplicate across runs and kernels, and those titles should
read like syzbot's so findings can be compared with upstream reports. So the rules follow
syzkaller's pkg/report conventions (title shapes, skipped frames, "corrupted" verdicts), are
kept as data (a table of report formats, like syzkaller's linux.go and LAVA's kernel message
table), and what a report *is* (kind, fatal) is decided apart from how it was *found*.

Guest output is untrusted: only the head of a log is read (MAX_LOG_BYTES, MAX_LOG_LINES),
lines are clipped to MAX_LINE before any regex sees them, no pattern nests unbounded
repetitions ("A.*B.*C" is matched piecewise, see patterns.Ordered), and the number of reports and
the lines and bytes each may span are bounded, so work grows linearly with the log.

This module is the engine: it indexes the log, finds each report's lines and hands them to
the table (farm.triage.linux), the titling (farm.triage.titles) and the report types
(farm.triage.report_types). API: parse(log) -> all reports, title(log) -> the primary one
(syzkaller's title of a log), both taking str or bytes (any bytes: offsets in a Report are
byte offsets into the log).
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import accumulate, compress
from operator import add
from typing import Final, cast

from farm.protocol import MARKER_PREFIX
from farm.triage.linux import (
    CONSOLE_HANGUP,
    INFO_WITH_STACK,
    NOT_A_NEW_REPORT,
    OOPSES,
    TRIAL_MARKER,
)
from farm.triage.report_types import FATAL_HEADERS, kind_of
from farm.triage.stacks import FRAME_LINES, RIP, STACK_STARTS, lacks_stack
from farm.triage.titles import TIMESTAMP_IN_TITLE, TITLE_FRAME, Described, describe, normalize_title

MAX_LOG_BYTES: Final = 32 << 20  # the head of a longer log is parsed, the rest is ignored
MAX_LOG_LINES: Final = 1_000_000  # likewise (a real 32 MiB console has some 400k lines)
MAX_LINE: Final = 1024  # printk lines are < 1 KiB: longer "lines" are merged garbage, clipped
MAX_REPORTS: Final = 1000
WINDOW_LINES: Final = 2000  # how far a report may extend past its first line, in lines
WINDOW_BYTES: Final = 1 << 20  # and in bytes (hostile logs have huge "lines")
REPORT_SECONDS: Final = 60.0  # a report prints within this; a task's later lines are not in it
# With caller ids a report may borrow from the task's next report (a lockdep splat cut short
# by an oops, a BUG then its WARNING), as syzkaller lets it, but not from the one after.
TAGGED_REPORTS: Final = 2
MAX_TEXT_LINES: Final = 400  # shown to people; the title may look further


@dataclass(frozen=True)
class Report:
    """One kernel report found in a console log."""

    title: str  # syzkaller-style, stable across runs: "WARNING in zap_pte_range"
    kind: str  # what it is (report_types.REPORT_KINDS): WARNING, BUG, KASAN, GPF, HANG, ...
    corrupted: bool  # truncated or interleaved, or without the stack its kind promises
    frame: str | None  # the guilty function, when the title names one
    start: int  # byte offset of the report's header line in the log
    end: int  # byte offset just past the last line shown in `text`
    text: str  # the report for a reader: a few lines of context, then the report itself
    fatal: bool  # a panic: the machine is dead or about to be


# --------------------------------------------------------------------------------------------
# The log: lines, their console context, and indexes of the lines that matter.

_CONSOLE_PREFIX: Final = re.compile(
    r"(?:\*\* [0-9]+ printk messages dropped \*\* )?(?:<[0-9]+>)?"
    r"\[ *[0-9]+\.[0-9]+\](\[ *(?:C|T)[0-9]+\])? ",
    re.ASCII,
)
_CONSOLE_PREFIX_LOGIN: Final = re.compile(  # "syzkaller login: [  12.3] ..." on a serial console
    r"(?:\*\* [0-9]+ printk messages dropped \*\* )?(?:.* login: )?(?:<[0-9]+>)?"
    r"\[ *[0-9]+\.[0-9]+\](\[ *(?:C|T)[0-9]+\])? ",
    re.ASCII,
)
_TASK_CONTEXT: Final = re.compile(r"\[ *T[0-9]+\]", re.ASCII)
_CPU_CONTEXT: Final = re.compile(r"\[ *C[0-9]+\]", re.ASCII)
_NO_CONTEXT: Final = ""
_CONSOLE: Final = "console"  # timestamped, but no caller id
# Header search over the whole log: capitalised headers in one regex, the rest by str.find
# (faster than one big alternation, whose first-character filter lowercase letters defeat).
# Cheap hints that cover every header (checked exactly per line by _Log._match_oops).
_HEADER_HINTS: Final = ("BUG", "panic", "divide")
_UPPER_HEADERS: Final = re.compile(
    "|".join(
        [*_HEADER_HINTS[:1]]
        + [
            re.escape(o.header)
            for o in OOPSES
            if o.header[0].isupper() and _HEADER_HINTS[0] not in o.header
        ]
    )
)
_OTHER_HEADERS: Final = (
    *_HEADER_HINTS[1:],
    *(
        o.header
        for o in OOPSES
        if not o.header[0].isupper() and not any(h in o.header for h in _HEADER_HINTS)
    ),
)
# Substrings of every STACK_STARTS match, to index candidate lines with str.find.
_STACK_START_HINTS: Final = (
    "Call Trace", "Call trace", "acktrace", "Alloc", "Freed", "Uninit was stored", "badaddr: ",
)  # fmt: skip
_NMI_TRACEBACK: Final = "Sending NMI from CPU"


def _to_text(log: str | bytes) -> str:
    """Bytes -> one char per byte (latin-1), so offsets are byte offsets and nothing fails.

    Only the head of a log is kept: MAX_LOG_BYTES, and MAX_LOG_LINES lines (a flood of empty
    lines would otherwise cost far more memory than its bytes)."""
    if isinstance(log, str):
        log = log.encode("utf-8", "surrogateescape")
    text = log[:MAX_LOG_BYTES].decode("latin-1")
    if text.count("\n") > MAX_LOG_LINES:
        head = text.split("\n", MAX_LOG_LINES)[:-1]
        text = text[: sum(map(len, head)) + MAX_LOG_LINES]
    return text


def _display(text: str) -> str:
    """Back from the parser's one-char-per-byte view to text for people (bad UTF-8 as \ufffd)."""
    return text.encode("latin-1").decode("utf-8", "replace")


def _find_all(text: str, needle: str) -> list[int]:
    out = []
    pos = text.find(needle)
    while pos >= 0:
        out.append(pos)
        pos = text.find(needle, pos + 1)
    return out


class _Log:
    """A console log split in lines, with per-line facts computed on demand."""

    def __init__(self, text: str) -> None:
        self.text = text
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        n = len(lines)
        # starts[i]: offset of line i (lengths plus one newline per line), computed in C loops.
        self.starts = list(map(add, accumulate(map(len, lines), initial=0), range(n + 1)))
        self.long_lines: list[int] = []  # clipped to MAX_LINE before any regex sees them
        if n and max(map(len, lines)) > MAX_LINE:
            self.long_lines = list(compress(range(n), map(MAX_LINE.__lt__, map(len, lines))))
            lines = lines.copy()
            for i in self.long_lines:
                lines[i] = lines[i][:MAX_LINE]
        self.raw = lines
        # Per line: (caller id, " " if there is a console prefix, text after it); by chunks.
        self.parts: list[tuple[str, str, str] | None] = [None] * n
        self.markers = self._lines_with(
            (MARKER_PREFIX,), lambda ln: TRIAL_MARKER.search(ln) is not None
        )
        marker_set = set(self.markers)
        self.oops_at: dict[int, int] = {}
        offsets = [m.start() for m in _UPPER_HEADERS.finditer(text)]
        for header in _OTHER_HEADERS:
            offsets.extend(_find_all(text, header))
        for i in {bisect_right(self.starts, off) - 1 for off in offsets}:
            if i < n and i not in marker_set and (idx := self._match_oops(self.raw[i])) is not None:
                self.oops_at[i] = idx
        self.oops_lines = sorted(self.oops_at)
        self._stack_lines: list[int] | None = None
        self._nmi_lines: list[int] | None = None
        self._info_lines: list[int] | None = None
        self._special_lines: list[int] | None = None

    def _lines_with(
        self, needles: Sequence[str], keep: Callable[[str], bool] | None = None
    ) -> list[int]:
        found: set[int] = set()
        for needle in needles:
            for off in _find_all(self.text, needle):
                found.add(bisect_right(self.starts, off) - 1)
        return sorted(i for i in found if i < len(self.raw) and (keep is None or keep(self.raw[i])))

    @property
    def stack_lines(self) -> list[int]:
        """Lines that may start a stack trace (a superset: check STACK_STARTS on them)."""
        if self._stack_lines is None:
            self._stack_lines = self._lines_with(_STACK_START_HINTS)
        return self._stack_lines

    @property
    def nmi_lines(self) -> list[int]:
        """Lines that start an all-CPU backtrace (their lines count for the report)."""
        if self._nmi_lines is None:
            self._nmi_lines = self._lines_with((_NMI_TRACEBACK,))
        return self._nmi_lines

    @staticmethod
    def _match_oops(line: str) -> int | None:
        """The first OOPSES entry whose header is on the line and not excused by its ignores."""
        for idx, oops in enumerate(OOPSES):
            if oops.header in line and not any(r.search(line) for r in oops.ignore):
                return idx
        return None

    def info(self, i: int) -> tuple[str, str, bool]:
        """(context, line without console prefix, is a questionable ' ? ' frame)."""
        tag, space, rest = self.parts[i] or self.line_parts(i)
        if not space:
            return _NO_CONTEXT, rest, False
        return _line_info_rest(tag or _CONSOLE, rest)

    def line_parts(self, i: int) -> tuple[str, str, str]:
        self.fill(i, i + 1)
        got = self.parts[i]
        assert got is not None
        return got

    def fill(self, lo: int, hi: int) -> None:
        """Split lines lo..hi-1 into their parts, a chunk at a time (one C-level regex pass)."""
        for c in range(lo // _CHUNK, (hi - 1) // _CHUNK + 1):
            if self.parts[c * _CHUNK] is not None:
                continue
            lo_c, hi_c = c * _CHUNK, min(len(self.raw), (c + 1) * _CHUNK)
            chunk = self.text[self.starts[lo_c] : self.starts[hi_c] - 1]
            found = [] if "\r" in chunk or " login: " in chunk else _LINE_PARTS.findall(chunk)
            if len(found) != hi_c - lo_c:  # those rare chunks, line by line
                found = [_line_parts(line) for line in self.raw[lo_c:hi_c]]
            self.parts[lo_c:hi_c] = found
            for i in self.long_lines[
                bisect_left(self.long_lines, lo_c) : bisect_left(self.long_lines, hi_c)
            ]:
                tag, space, rest = found[i - lo_c]
                self.parts[i] = (tag, space, rest[:MAX_LINE])

    @property
    def special_lines(self) -> list[int]:
        """Lines that change how a report's lines are collected (see _collect)."""
        if self._special_lines is None:
            panics = [
                j
                for j in self.oops_lines
                if "Kernel panic - not syncing" in self.raw[j]
                or "WARNING: possible circular locking dependency detected" in self.raw[j]
            ]
            disabling = self._lines_with(("Disabling lock debugging due to kernel taint",))
            self._special_lines = sorted({*panics, *disabling, *self.nmi_lines})
        return self._special_lines

    def next_info_with_stack(self, after: int) -> int | None:
        """The first line after `after` with a not-a-bug message that prints a stack."""
        if self._info_lines is None:
            self._info_lines = self._lines_with(INFO_WITH_STACK)
        k = bisect_right(self._info_lines, after)
        return self._info_lines[k] if k < len(self._info_lines) else None

    def next_report(self, after: int) -> int | None:
        """The first line after `after` whose header starts a new report."""
        for i in self.oops_lines[bisect_right(self.oops_lines, after) :]:
            if not _continues_report(self.raw[i]):
                return i
        return None


_CHUNK: Final = 128
_LINE_PARTS: Final = re.compile(
    r"(?m)^(?:(?:\*\* [0-9]+ printk messages dropped \*\* )?(?:<[0-9]+>)?"
    r"\[ *[0-9]+\.[0-9]+\](\[ *(?:C|T)[0-9]+\])?( ))?(.*)$",
    re.ASCII,
)


def _line_parts(line: str) -> tuple[str, str, str]:
    """Like _LINE_PARTS for one line, also handling "\r" ends and "... login: [ 1.2] ..."."""
    if line.endswith("\r"):
        line = line[:-1]
    m = (_CONSOLE_PREFIX_LOGIN if " login: " in line else _CONSOLE_PREFIX).match(line)
    if m is None:
        return "", "", line
    return m.group(1) or "", " ", line[line.find("] ") + 2 :]


def _line_info_rest(ctx: str, rest: str) -> tuple[str, str, bool]:
    """x86 marks unreliable frames with ' ? ', powerpc with ' (unreliable)' (not in <EOI>)."""
    if "<EOI>" not in rest:
        if " ? " in rest:  # syzkaller's "([<pc>])? \? " matches exactly when " ? " occurs
            return ctx, rest[rest.find(" ? ") + 2 :], True
        if rest.endswith(" (unreliable)"):
            return ctx, rest[:-13], True
    return ctx, rest, False


def _continues_report(line: str) -> bool:
    """A header line that belongs to the report before it (see NOT_A_NEW_REPORT)."""
    return any(r.search(line) for r in NOT_A_NEW_REPORT)


# --------------------------------------------------------------------------------------------
# Finding reports


@dataclass
class _Scan:
    """A report's own lines (console prefix stripped), the log line of each, and what the
    titling needs to look past them."""

    ctx: str
    lines: list[str] = field(default_factory=list)
    nos: list[int] = field(default_factory=list)
    limit: int = 0  # window end (exclusive)
    resume: int | None = None  # untagged: where the next report interrupted the titled part
    tagged: bool = False
    counted: int = 0
    skip_text: bool = False
    cpu_traceback: bool = False
    min_lines: int = 22


def _window_end(log: _Log, start: int) -> int:
    """Where a report's lines must end: WINDOW_LINES/WINDOW_BYTES on, or a trial marker."""
    limit = min(len(log.raw), start + WINDOW_LINES)
    limit = min(limit, bisect_right(log.starts, log.starts[start] + WINDOW_BYTES, lo=start + 1) - 1)
    k = bisect_right(log.markers, start)
    if k < len(log.markers):
        limit = min(limit, log.markers[k])
    return max(limit, start + 1)


def _scan(log: _Log, start: int) -> _Scan:
    """Collect a report's lines like syzkaller: same console context, no ' ? ' frames, and
    without the panic that repeats the report's stack.

    Without caller ids (printk CONFIG_PRINTK_CALLER) the titled part ends where the next
    report starts; with them, other tasks' lines are dropped and the task's own lines run on.
    """
    ctx, _, _ = log.info(start)
    scan = _Scan(ctx=ctx, limit=_window_end(log, start))
    scan.min_lines = 16 if "BUG: KMSAN:" in log.raw[start] else 22
    scan.tagged = ctx not in (_NO_CONTEXT, _CONSOLE)
    if scan.tagged:
        _collect(log, scan, _tagged_lines(log, scan, start), start)
        return scan
    end = scan.limit
    for stop in (log.next_report(start), log.next_info_with_stack(start)):
        if stop is not None and stop < end:
            end = scan.resume = stop
    log.fill(start, end)
    _collect(log, scan, (start,), start)
    pos = start + 1
    special = log.special_lines
    for j in special[bisect_left(special, pos) :]:
        if j >= end or scan.cpu_traceback or scan.skip_text:
            break
        _collect_plain(log, scan, pos, j)
        _collect(log, scan, (j,), start)
        pos = j + 1
    if scan.skip_text:
        return scan  # nothing after the cut belongs to the report
    if scan.cpu_traceback:
        _collect(log, scan, range(pos, end), start)
    else:
        _collect_plain(log, scan, pos, end)
    return scan


def _collect_plain(log: _Log, scan: _Scan, lo: int, hi: int) -> None:
    """_collect for an untagged run of lines that change no state (see special_lines), as
    a filter over the line parts."""
    parts = cast(list[tuple[str, str, str]], log.parts[lo:hi])  # filled by _scan
    seg = zip(range(lo, hi), parts, strict=True)
    if scan.ctx == _CONSOLE:
        picked = [
            (i, rest)
            for i, (tag, space, rest) in seg
            if space
            and not tag
            and ((" ? " not in rest and not rest.endswith(" (unreliable)")) or "<EOI>" in rest)
        ]
    else:
        picked = [(i, rest) for i, (_tag, space, rest) in seg if not space]
    scan.counted += len(picked)
    scan.nos.extend(i for i, _ in picked)
    scan.lines.extend(rest for _, rest in picked)


def _collect(log: _Log, scan: _Scan, indices: Iterable[int], start: int) -> None:
    """Apply the per-line rules to `indices` (ascending), appending the report's lines.

    `start` is the header line (always kept); the scan's running state (line count, the cut
    before a trailing panic, all-CPU backtraces) carries across calls.
    """
    parts, raw = log.parts, log.raw
    ctx, lines, nos, tagged = scan.ctx, scan.lines, scan.nos, scan.tagged
    counted, skip_text, min_lines = scan.counted, scan.skip_text, scan.min_lines
    for i in indices:
        line = raw[i]
        if i != start:
            if tagged and not scan.cpu_traceback and ctx not in line:
                continue  # another task's line: its prefix carries another caller id
            tag, space, stripped = parts[i] or log.line_parts(i)
            ctx1 = (tag or _CONSOLE) if space else _NO_CONTEXT
            if space and (" ? " in stripped or stripped.endswith(" (unreliable)")):
                ctx1, stripped, questionable = _line_info_rest(ctx1, stripped)
                if questionable:
                    continue
            if ctx1 != ctx and not (scan.cpu_traceback and _CPU_CONTEXT.search(ctx1)):
                continue
            if skip_text:
                break  # past the cut nothing belongs to the report
            counted += 1
            if "Disabling lock debugging due to kernel taint" in line:
                continue
        else:
            stripped = log.info(i)[1]
            counted += 1
        if _NMI_TRACEBACK in line:
            scan.cpu_traceback = True  # all CPUs' backtraces belong to the report
        elif counted > min_lines and (
            "Kernel panic - not syncing" in line
            or "WARNING: possible circular locking dependency detected" in line
        ):
            skip_text = True  # the panic's own stack would repeat the report's
            if i != start:
                continue
        lines.append(stripped)
        nos.append(i)
    scan.counted, scan.skip_text = counted, skip_text


def _tagged_lines(log: _Log, scan: _Scan, start: int) -> Iterator[int]:
    """The window's lines that carry the report's caller id, found with str.find since other
    tasks may print most of the window; every line once the report turns into an all-CPU
    backtrace (those lines carry CPU ids). Stops at lines printed much later (see
    REPORT_SECONDS) or before (a reboot)."""
    text, starts, end = log.text, log.starts, log.starts[scan.limit]
    t0 = _timestamp(log.raw[start])

    def later(i: int) -> bool:
        t = _timestamp(log.raw[i])
        return t0 is not None and t is not None and not t0 <= t <= t0 + REPORT_SECONDS

    raw, ctx, limit, oops_at = log.raw, scan.ctx, scan.limit, log.oops_at
    i, reports = start, 0
    while True:
        if i != start and i in oops_at and not _continues_report(raw[i]) and log.info(i)[0] == ctx:
            reports += 1
            if reports == TAGGED_REPORTS:
                return
        yield i
        if scan.cpu_traceback:
            for j in range(i + 1, limit):
                if later(j):
                    return
                yield j
            return
        if i + 1 < limit and ctx in raw[i + 1]:
            i += 1  # runs of the task's own lines: no search, no clock check
            continue
        pos = text.find(ctx, starts[i + 1], end)
        if pos < 0:
            return
        i = bisect_right(starts, pos, lo=i + 1) - 1
        if later(i):
            return


_TIMESTAMP: Final = re.compile(r"\[ *([0-9]+\.[0-9]+)\]", re.ASCII)


def _timestamp(line: str) -> float | None:
    """The printk time stamp of a line ("[   12.345678]"), if it has one."""
    if line.startswith("["):  # the common case, without a regex
        end = line.find("]", 1, 32)
        stamp = line[1:end].lstrip(" ")
        if end > 0 and stamp.replace(".", "", 1).isdigit():
            return float(stamp)
    m = _TIMESTAMP.search(line, 0, 64)
    return float(m.group(1)) if m is not None else None


class _Beyond:
    """The report's own lines past its titled part, for an untagged report cut short by the
    next one: syzkaller checks stacks over everything the report's context printed to the
    end of the log. Rescanning that for every report would be quadratic, so candidate lines
    come from the log's indexes and only their neighbourhood is read; nothing is computed
    unless a check needs it."""

    def __init__(self, log: _Log, scan: _Scan) -> None:
        self.log, self.scan = log, scan
        self._ready = False
        self.cut = self.walked = scan.resume or 0
        self.taken: set[int] = set()

    @property
    def resume(self) -> int | None:
        """Where the next report interrupted the titled part (None: it was not)."""
        return self.scan.resume

    def _prepare(self) -> None:
        """Find where the report's lines end (the panic cut) past the titled part."""
        self._ready = True
        log, scan, resume = self.log, self.scan, self.scan.resume
        if resume is None:
            return
        state = _Scan(
            ctx=scan.ctx,
            counted=scan.counted,
            skip_text=scan.skip_text,
            cpu_traceback=scan.cpu_traceback,
            min_lines=scan.min_lines,
        )
        nmi = log.nmi_lines
        k = bisect_right(nmi, resume - 1)
        slow = state.cpu_traceback or (k < len(nmi) and nmi[k] < scan.limit)  # rare: walk all
        cut = resume if state.skip_text else scan.limit
        i = resume
        # Follow the line count until the panic cut could apply, then find the cut by index.
        while not state.skip_text and i < scan.limit and (slow or state.counted <= state.min_lines):
            _collect(log, state, (i,), -1)
            if state.skip_text:
                cut = i
            i += 1
        if not state.skip_text and not slow:
            for j in log.oops_lines[bisect_right(log.oops_lines, i - 1) :]:
                if j >= scan.limit:
                    break
                line = log.raw[j]
                if (
                    "Kernel panic - not syncing" in line
                    or "WARNING: possible circular locking dependency detected" in line
                ) and _own(log, scan.ctx, j):
                    cut = j
                    break
        self.cut, self.walked, self.taken = cut, i, set(state.nos)

    def _member(self, j: int) -> bool:
        if j >= self.cut:
            return False
        if j < self.walked:
            return j in self.taken
        return (
            _own(self.log, self.scan.ctx, j)
            and "Disabling lock debugging due to kernel taint" not in self.log.raw[j]
        )

    def lines_from(self, j: int, count: int) -> list[str]:
        """Up to `count` of the report's lines from log line j on."""
        if not self._ready:
            self._prepare()
        out: list[str] = []
        while j < self.cut and len(out) < count:
            if self._member(j):
                out.append(self.log.info(j)[1])
            j += 1
        return out

    def first(self, k: int) -> tuple[str, list[str]] | None:
        """The first line matching STACK_STARTS[k] past the titled part, and 16 lines after."""
        if self.scan.resume is None:
            return None
        if not self._ready:
            self._prepare()
        key, index = STACK_STARTS[k], self.log.stack_lines
        for j in index[bisect_left(index, self.scan.resume) :]:
            if j >= self.cut:
                return None
            if key.search(self.log.raw[j]) and self._member(j):  # cheap test first
                return self.log.info(j)[1], self.lines_from(j + 1, 16)
        return None


def _stack_hints(log: _Log, scan: _Scan) -> list[int]:
    """Positions in the report of its lines that may start a stack (from the log's index)."""
    nos = scan.nos
    if not nos:
        return []
    index = log.stack_lines
    out = []
    for j in index[bisect_left(index, nos[0]) : bisect_right(index, nos[-1])]:
        k = bisect_left(nos, j)
        if k < len(nos) and nos[k] == j:
            out.append(k)
    return out


class _Once:
    """A lazily computed, remembered bool (for checks only failure paths need)."""

    def __init__(self, compute: Callable[[], bool]) -> None:
        self._compute: Callable[[], bool] | None = compute
        self._value = False

    def __call__(self) -> bool:
        if self._compute is not None:
            self._value, self._compute = self._compute(), None
        return self._value


def _only_questionable_frames(log: _Log, scan: _Scan) -> bool:
    """Is this a report from a kernel that cannot vouch for its call trace: every frame
    marked ' ? ' (no frame pointers or ORC), but a RIP/PC line naming the function?

    Without the RIP line the report is just truncated, as syzkaller says."""
    first = scan.nos[0]
    last = min(scan.limit, scan.nos[-1] + 2)
    log.fill(first, last)
    questionable = rip = False
    for j in range(first + 1, last):
        ctx, stripped, q = log.info(j)
        if ctx != scan.ctx:
            continue
        if q:
            questionable = True
        elif FRAME_LINES[0].match(stripped) and "+0x" in stripped:
            return False  # a reliable frame: the trace is not all questionable
        elif not rip and (m := RIP.search(stripped)) is not None and any(m.groups()):
            rip = True
    return questionable and rip


def _own(log: _Log, ctx: str, j: int) -> bool:
    """Is line j the report's own (its console context), and not a ' ? ' frame?"""
    ctx1, _, questionable = log.info(j)
    return ctx1 == ctx and not questionable


def _prefix(log: _Log, start: int) -> list[str]:
    """Up to 5 lines before the report (10 with a task id), same context, for the reader."""
    ctx, _, _ = log.info(start)
    keep = 10 if _TASK_CONTEXT.search(ctx) else 5
    stop = max(0, start - 4 * keep, bisect_left(log.starts, log.starts[start] - WINDOW_BYTES))
    k = bisect_right(log.markers, start - 1)
    if k:
        stop = max(stop, log.markers[k - 1] + 1)
    out: list[str] = []
    tagged = ctx not in (_NO_CONTEXT, _CONSOLE)
    i = start - 1
    while i >= stop:
        if tagged:  # jump to the previous line with the same caller id
            pos = log.text.rfind(ctx, log.starts[stop], log.starts[i + 1])
            if pos < 0:
                break
            i = bisect_right(log.starts, pos) - 1
        c, stripped, q = log.info(i)
        if c == ctx and stripped and not q:
            out.append(stripped)
            if len(out) == keep:
                break
        i -= 1
    out.reverse()
    return out


def _report_at(log: _Log, start: int, hangup: bool) -> Report:
    """The report whose header is log line `start`: detection (_scan, describe) first,
    then what it is (kind, fatal) and what a reader sees (text, offsets)."""
    oops = OOPSES[log.oops_at[start]]
    scan = _scan(log, start)
    span = (log.starts[scan.nos[0]], log.starts[scan.nos[-1] + 1])
    shaky = _Once(lambda: _only_questionable_frames(log, scan))
    described = describe(oops, scan.lines, log.text.find("should_fail", *span) >= 0, shaky)
    if described is None:  # the header hid in a console prefix: look at the raw lines
        last = start
        for j in log.oops_lines[bisect_right(log.oops_lines, start) :]:
            if j >= scan.limit:
                break
            last = j
        described = describe(oops, log.raw[start : last + 1]) or Described(
            oops.header, False, None, None
        )
    title = described.title
    corrupted = (
        described.corrupted
        or hangup
        or TIMESTAMP_IN_TITLE.search(title) is not None  # a timestamp merged into the header
        or (
            described.fmt is not None
            and not described.fmt.no_stack
            and lacks_stack(scan.lines, _stack_hints(log, scan), _Beyond(log, scan), shaky)
        )
    )
    title = normalize_title(title)
    frame = described.frame
    if frame is None and (m := TITLE_FRAME.match(title)) is not None and m.group(1) != "corrupted":
        frame = m.group(1)
    nxt = log.next_report(start)
    last = _last_shown(log, scan, nxt)
    region_end = min(nxt if nxt is not None else len(log.raw), scan.limit)
    fatal = oops.header in FATAL_HEADERS or any(
        "Kernel panic - not syncing" in log.raw[j]
        for j in log.oops_lines[
            bisect_right(log.oops_lines, start - 1) : bisect_right(log.oops_lines, region_end - 1)
        ]
    )
    return Report(
        title=title,
        kind=kind_of(title, oops.header),
        corrupted=corrupted,
        frame=frame,
        start=log.starts[start],
        end=min(log.starts[last + 1], len(log.text)),
        text=_display("\n".join([*_prefix(log, start), *_shown(log, scan, start, last)]) + "\n"),
        fatal=fatal,
    )


_END_OF_REPORT: Final = ("---[ end ", "=" * 30)


def _last_shown(log: _Log, scan: _Scan, nxt: int | None) -> int:
    """The report's last line for a reader: its end-of-report line, else its last line before
    the next report (at most MAX_TEXT_LINES lines)."""
    nos = scan.nos
    count = min(bisect_left(nos, nxt) if nxt is not None else len(nos), MAX_TEXT_LINES)
    if count > 1:  # find the first end-of-report line with str.find over the log
        lo, hi = log.starts[nos[1]], log.starts[nos[count - 1] + 1]
        for marker in _END_OF_REPORT:
            pos = log.text.find(marker, lo, hi)
            while pos >= 0:
                line_no = bisect_right(log.starts, pos) - 1
                k = bisect_left(nos, line_no)
                if 1 <= k < len(nos) and nos[k] == line_no and scan.lines[k].startswith(marker):
                    count = min(count, k + 1)
                    break
                pos = log.text.find(marker, pos + 1, hi)
    return nos[max(count, 1) - 1]


def _shown(log: _Log, scan: _Scan, start: int, last: int) -> list[str]:
    """The report as printed, for a reader: console prefixes removed, ' ? ' frames kept,
    and (with caller ids) only the report's own lines."""
    log.fill(start, last + 1)
    parts = cast(list[tuple[str, str, str]], log.parts[start : last + 1])
    if scan.tagged and not scan.cpu_traceback:
        ctx = scan.ctx
        return [rest for tag, _space, rest in parts if tag == ctx]
    return [rest for _tag, _space, rest in parts]


def _reports(log: str | bytes, first_only: bool) -> list[Report]:
    """Reports from the first header line on; each next one at the next header that starts
    a report (see NOT_A_NEW_REPORT), at most MAX_REPORTS."""
    text = _to_text(log)
    parsed = _Log(text)
    if not parsed.oops_lines:
        return []
    hangup = CONSOLE_HANGUP in text
    out: list[Report] = []
    start: int | None = parsed.oops_lines[0]
    while start is not None and len(out) < MAX_REPORTS:
        out.append(_report_at(parsed, start, hangup))
        if first_only:
            break
        start = parsed.next_report(start)
    return out


def parse(log: str | bytes) -> list[Report]:
    """All kernel reports in a console log, in order of their first line.

    A report starts at a header line (see OOPSES) and runs to the next one, except lines that
    continue a report (NOT_A_NEW_REPORT: the oops line of a BUG, the panic that follows it).
    """
    return _reports(log, first_only=False)


def title(log: str | bytes) -> Report | None:
    """The log's primary report (its first) as syzkaller titles a log; None if there is none."""
    found = _reports(log, first_only=True)
    return found[0] if found else None
