"""Titles: from a report's lines to the title that names it, and the one title normaliser.

Why: findings deduplicate on titles, across runs and kernels, and the titles should read
like syzbot's so findings compare with upstream reports. So a report is titled by the first
of its formats that matches (farm.triage.linux), and every title, the parser's and any other
a finding is keyed by (farm.store.findings), goes through normalize_title: syzkaller's
rewrites, 120 bytes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from farm.triage.linux import Format, Oops
from farm.triage.stacks import guilty_frames, rip_frame

MAX_CANDIDATES: Final = 16  # header lines of a report tried by its formats


# (pattern, replacement, a substring the pattern needs: a cheap test before the regex)
_TITLE_REWRITES: Final = tuple(
    (re.compile(pattern, re.ASCII), repl, hint)
    for pattern, repl, hint in (
        (r"syz-executor\.?[0-9]+((/|:)[0-9]+)?", "syz-executor", "syz-executor"),
        (r"syzkaller[0-9]+((/|:)[0-9]+)?", "syzkaller", "syzkaller"),
        (r"([^a-zA-Z0-9])(?:0x)?[0-9a-f]{6,}", r"\1ADDR", ""),
        (r"([0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3})", "IP", "."),
        (r"(\.\w+)(:[0-9]+)+", r"\1:LINE", ":"),
        # (Tried at the start of each identifier run only: linear, same result.)
        (
            r"(?<![a-zA-Z0-9_.])([0-9_.]*)([a-zA-Z][a-zA-Z0-9_.]+)\+0x[0-9a-z]+/0x[0-9a-z]+",
            r"\1\2",
            "+0x",
        ),
        (r"CPU#[0-9]+", "CPU", "CPU#"),
        (r"(\W)(\d+)(\W|$)", r"\1NUM\3", ""),
        (r"\d{7,}", "NUM", ""),  # short digit runs stay: cfg80211, nl802154
    )
)
# zapfarm's, on the cut title: findings once had a normaliser of their own that added this
# to the parser's titles, so keeping it keeps their signatures. Any 0x number and any 8 hex
# digits are addresses too ("fp=0x0", "FFFF8880"), which syzkaller's rewrites leave.
_MORE_ADDRESSES: Final = re.compile(r"\b0x[0-9a-fA-F]+\b|\b[0-9a-fA-F]{8,}\b", re.ASCII)
_MAX_TITLE: Final = 120
_TITLE_DROP: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\xff]+")
_TITLE_SPACES: Final = re.compile(r" {2,}")
TIMESTAMP_IN_TITLE: Final = re.compile(r"\[ *[0-9]+\.[0-9]+\]")
TITLE_FRAME: Final = re.compile(r".* in ((?:<[a-zA-Z0-9_: ]+>)?[a-zA-Z0-9_:]+)")


def normalize_title(title: str) -> str:
    """Make a title stable across runs like syzkaller: addresses, pids, line numbers, CPUs
    and sizes become ADDR/NUM/LINE/CPU (each rewrite to a fixed point), then the first 120
    bytes are kept without control or non-ASCII bytes and with single spaces; last, short
    0x numbers, which syzkaller keeps, become ADDR too (still at most 120 bytes).

    The 120 are bytes: the parser's titles hold one char per byte (its latin-1 view); other
    text (a title given to farm.store.findings) is taken as its UTF-8 bytes. This is the one
    title normaliser: the parser's titles are its fixed points, so a finding keyed by a
    parser title is keyed by that title.
    """
    if not title.isascii() and max(title) > "\xff":
        try:
            data = title.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # a lone surrogate that stands for no byte: dropped below
            data = title.encode("utf-8", "surrogatepass")
        title = data.decode("latin-1")
    for pattern, repl, hint in _TITLE_REWRITES:
        if hint not in title:
            continue
        while True:
            new = pattern.sub(repl, title)
            if new == title:
                break
            title = new
    title = _TITLE_DROP.sub("", title[:_MAX_TITLE]).replace("\t", " ")
    title = _MORE_ADDRESSES.sub("ADDR", _TITLE_SPACES.sub(" ", title))
    return title[:_MAX_TITLE].strip()


@dataclass
class Described:
    title: str
    corrupted: bool
    fmt: Format | None
    frame: str | None


def describe(
    oops: Oops,
    lines: list[str],
    faults: bool = True,
    unreliable: Callable[[], bool] = lambda: False,
) -> Described | None:
    """Title a report's lines with the oops' formats (earliest match wins, first on ties).

    `faults`: the lines may mention should_fail (fault injection); False lets stack walks
    stop early. `unreliable()`: the report's call trace has only ' ? ' frames (a kernel
    without frame pointers or ORC); then a stack without frames falls back to the RIP line.
    """
    header = oops.header
    candidates = [i for i, ln in enumerate(lines) if header in ln][:MAX_CANDIDATES]
    if not candidates:
        return None
    best: tuple[int, int] | None = None
    title, bad, used, frame = "", False, None, None
    matched_title = False
    for f in oops.formats:
        m = f.title.find(lines, candidates)
        if m is None:
            continue
        at = (m[0], m[1])
        if best is not None and (at > best or (at == best and title)):
            continue
        if best is None or at < best:
            title, used, frame, best = "", None, None, at
        matched_title = True
        if f.report is not None:
            m = f.report.find(lines, candidates)
            if m is None:
                continue
        frames: list[str] = []
        bad = False
        if f.stack is not None:
            frames, ok = guilty_frames(f.stack, [lines[m[0]][m[1] :], *lines[m[0] + 1 :]], faults)
            bad = not ok
            if (
                bad
                and "corrupted" in frames
                and unreliable()
                and (rip := rip_frame(f.stack, lines))
            ):
                frames = [rip if x == "corrupted" else x for x in frames]
                bad = False
        title = f.template.format(*m[2], *frames)
        used = f
        frame = frames[0] if frames and frames[0] != "corrupted" else None
    if not title:
        bad = matched_title  # the header matched but the rest of its format did not
        line = lines[candidates[0]]
        title = line[line.find(header) :]
    if used is not None and used.corrupted:
        bad = True
    return Described(title, bad, used, frame)
