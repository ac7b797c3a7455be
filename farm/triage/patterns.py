"""The pattern vocabulary the report table is written in: regexes with kernel shorthands.

Why apart: the Linux table (farm.triage.linux) and the stack recipes (farm.triage.stacks) are
data written in these few words. Guest output is untrusted, so nothing here nests unbounded
repetitions: "A.*B.*C" is matched piecewise (Ordered), and a pattern that spans lines is
matched line by line (Pat), which keeps the work linear in the log.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

_T = TypeVar("_T")


_PLACEHOLDERS: Final = {
    "{{PC}}": r"\[<?(?:0x)?[0-9a-f]+>?\]",
    "{{FUNC}}": r"([a-zA-Z0-9_]+)(?:\.|\+)",
    "{{SRC}}": r"([a-zA-Z0-9\-_/.]{1,255}\.[a-z]+:[0-9]+)",  # bounded: no runaway backtracking
}


def rx(pattern: str) -> re.Pattern[str]:
    """Compile a pattern with the {{PC}}/{{FUNC}}/{{SRC}} shorthands kernel frames need."""
    for name, value in _PLACEHOLDERS.items():
        pattern = pattern.replace(name, value)
    return re.compile(pattern, re.ASCII)


def memo(fn: Callable[[str], _T]) -> Callable[[str], _T]:
    """Memoise a function of a frame name: names repeat across reports, and the skip and
    anchor lists are long alternations. Bounded, since the names come from the guest."""
    cache: dict[str, _T] = {}

    def wrapper(name: str) -> _T:
        try:
            return cache[name]
        except KeyError:
            if len(cache) > 50_000:
                cache.clear()
            got = cache[name] = fn(name)
            return got

    wrapper.__doc__ = fn.__doc__
    return wrapper


@dataclass(frozen=True)
class _OrderedMatch:
    at: int
    found: tuple[str | None, ...]

    def start(self) -> int:
        return self.at

    def groups(self) -> tuple[str | None, ...]:
        return self.found


@dataclass(frozen=True)
class Ordered:
    """Patterns that must occur in this order on one line: "A.*B.*C" without the polynomial
    backtracking a regex engine spends on a hostile line. Each piece is searched from where
    the previous one ended; for existence this equals the regex (the leftmost A that works
    is the first one, since a later A only leaves less line)."""

    pieces: tuple[re.Pattern[str], ...]

    def search(self, line: str) -> _OrderedMatch | None:
        first = self.pieces[0].search(line)
        if first is None:
            return None
        found, at = list(first.groups()), first.end()
        for piece in self.pieces[1:]:
            m = piece.search(line, at)
            if m is None:
                return None
            found.extend(m.groups())
            at = m.end()
        return _OrderedMatch(first.start(), tuple(found))


def seq(*pieces: str) -> Ordered:
    return Ordered(tuple(rx(p) for p in pieces))


@dataclass(frozen=True)
class Pat:
    """A pattern on one line, then optionally patterns on later lines, in order.

    Kernel reports put what a title needs on different lines (the KASAN header, then the
    "Read of size" line); matching line by line keeps that linear. `later` patterns are
    tried from the start of each later line (write a leading `.*` to search); with `adjacent`
    each one must match the very next line.
    """

    head: re.Pattern[str] | Ordered
    later: tuple[re.Pattern[str], ...] = ()
    adjacent: bool = False

    def find(
        self, lines: Sequence[str], candidates: Sequence[int]
    ) -> tuple[int, int, list[str]] | None:
        """Return (line, column, groups) of the first match among candidate lines."""
        for i in candidates:
            m = self.head.search(lines[i])
            if m is None:
                continue
            groups = [g or "" for g in m.groups()]
            at = i
            for pattern in self.later:
                stop = min(at + 2, len(lines)) if self.adjacent else len(lines)
                for j in range(at + 1, stop):
                    mm = pattern.match(lines[j])
                    if mm is not None:
                        groups.extend(g or "" for g in mm.groups())
                        at = j
                        break
                else:
                    break
            else:
                return i, m.start(), groups
            if not self.adjacent:
                return None  # later lines only shrink from here on: no later head can succeed
        return None


def pat(head: str | Ordered, *later: str, adjacent: bool = False) -> Pat:
    return Pat(
        head if isinstance(head, Ordered) else rx(head), tuple(rx(x) for x in later), adjacent
    )
