"""How much of a trial's console the database keeps.

Long campaigns must not outgrow the disk, and clean trials are most of them:
anomalous trials (any verdict but ``clean``) keep their whole bounded
excerpt as text; clean trials keep theirs zlib-compressed, and only for a
deterministic sample (by trial id hash) of ``clean_console_sample`` of them.
Every trial keeps the excerpt's original size.
"""

from __future__ import annotations

import hashlib
import zlib
from typing import Any

CLEAN_CONSOLE_SAMPLE = 0.05  # fraction of clean trials whose console is kept (compressed)


def sampled(trial_id: str, fraction: float) -> bool:
    """Deterministic: the same trial is always in or out of the sample, whoever records it."""
    if fraction >= 1:
        return True
    if fraction <= 0:
        return False
    digest = hashlib.blake2b(trial_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") < fraction * (1 << 64)


def console_columns(
    trial_id: str, console: str, verdict: str, fraction: float = CLEAN_CONSOLE_SAMPLE
) -> dict[str, Any]:
    raw = console.encode("utf-8", errors="replace")
    if verdict != "clean":
        return {"console": console, "console_z": None, "console_bytes": len(raw)}
    if raw and sampled(trial_id, fraction):
        return {"console": None, "console_z": zlib.compress(raw, 6), "console_bytes": len(raw)}
    return {"console": None, "console_z": None, "console_bytes": len(raw)}


def console_text(console: str | None, console_z: bytes | None) -> str:
    """The stored console, whichever way it was kept ("" when it was not)."""
    if console is not None:
        return console
    if console_z:
        return zlib.decompress(console_z).decode("utf-8", errors="replace")
    return ""
