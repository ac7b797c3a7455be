"""Showing guest text safely: escaped, with control characters made visible.

A guest kernel can print anything, and people triage from what the web shows.
HTML is escaped (Jinja autoescape plus :func:`visible`), and characters a
terminal or a browser would act on are replaced by visible stand-ins rather
than dropped: an ANSI colour sequence reads as ``\\x1b[31m`` (marked) so nobody
is fooled by hidden text, and bidirectional overrides ("Trojan Source") cannot
reorder what a reader sees.
"""

from __future__ import annotations

import re
import zlib
from datetime import UTC, datetime

from markupsafe import Markup, escape

MAX_CONSOLE_CHARS = 1 << 20  # a decompressed console is never allowed past this

# C0 controls but tab and newline (CRLF is made LF first), DEL, C1, bidi overrides/isolates
_INVISIBLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _stand_in(char: str) -> str:
    """``\\x1b`` for ESC and friends: plain ASCII, so no font can turn it into a blank box."""
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` with invisible or active characters replaced (not escaped: JSON and tests)."""
    text = text.replace("\r\n", "\n")
    return _INVISIBLE.sub(lambda m: _stand_in(m.group()), text)


def visible(text: object) -> Markup:
    """Jinja filter: HTML-escape, then show control characters as marked stand-ins."""
    if text is None:
        return Markup("")
    escaped = str(escape(str(text))).replace("\r\n", "\n")
    return Markup(
        _INVISIBLE.sub(lambda m: f'<span class="ctl">{_stand_in(m.group())}</span>', escaped)
    )


def stored_console(console: str | None, console_z: bytes | None) -> str:
    """The trial's console however it was kept (text, or a zlib sample), bounded."""
    if console is not None:
        return console
    if not console_z:
        return ""
    inflate = zlib.decompressobj()
    try:
        raw = inflate.decompress(console_z, MAX_CONSOLE_CHARS)
    except zlib.error:
        return "[zapfarm: the stored console sample is corrupt]"
    return raw.decode("utf-8", errors="replace")


def excerpt(console: str, needle: str | None, before: int = 15, after: int = 120) -> str:
    """The lines of ``console`` around the first line containing ``needle`` (else its tail).

    A finding page shows where the report sits in the example trial's console;
    the whole log is one click away on the trial page.
    """
    lines = console.splitlines()
    at = None
    if needle:
        at = next((i for i, line in enumerate(lines) if needle in line), None)
    if at is None:
        start = max(0, len(lines) - (before + after))
        end = len(lines)
    else:
        start, end = max(0, at - before), min(len(lines), at + after)
    head = [f"[... {start} lines ...]"] if start else []
    tail = [f"[... {len(lines) - end} lines ...]"] if end < len(lines) else []
    return "\n".join(head + lines[start:end] + tail)


def first_line(text: str | None) -> str | None:
    """The first non-blank line without its printk timestamp: a needle for :func:`excerpt`."""
    for line in (text or "").splitlines():
        line = re.sub(r"^\s*\[\s*\d+\.\d+\]\s*", "", line).strip()
        if line:
            return line[:200]
    return None


def when(value: datetime | None) -> str:
    """A timestamp as people compare them across pages: UTC, to the second."""
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def ago(value: datetime | None, now: datetime | None = None) -> str:
    """Rough age ("3h ago"), as syzbot's table shows it."""
    if value is None:
        return "—"
    seconds = ((now or datetime.now(UTC)) - value).total_seconds()
    if seconds < 0:
        return "in the future"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


def number(value: int | float | None) -> str:
    """Thousands separated by a thin space, so large counts stay readable."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.1f}".replace(",", "\u2009")
    return f"{value:,}".replace(",", "\u2009")
