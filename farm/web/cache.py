"""A small time-based cache for aggregates over the trials table.

Counting a campaign's verdicts or a kernel's trials reads every matching row
(index-only at best); with millions of trials that is tens of milliseconds per
aggregate, too slow to repeat on every page load. Pages therefore show such
aggregates up to ``ttl`` seconds old and say so. Single rows and keyset pages
are never cached: they are cheap and must be exact.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")

DEFAULT_TTL_S = 30.0
MAX_ENTRIES = 4096


class TTLCache:
    """Values by key, recomputed once older than ``ttl`` seconds (``ttl <= 0``: no caching)."""

    def __init__(self, ttl: float = DEFAULT_TTL_S, clock: Callable[[], float] = time.monotonic):
        self.ttl = ttl
        self._clock = clock
        self._values: dict[Hashable, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        """The cached value for ``key``, or ``compute()`` stored under it.

        Two requests may compute the same key at once; both results are
        equally valid, so there is no per-key lock to wait on.
        """
        if self.ttl <= 0:
            return compute()
        now = self._clock()
        with self._lock:
            hit = self._values.get(key)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]  # type: ignore[no-any-return]
        value = compute()
        with self._lock:
            if len(self._values) >= MAX_ENTRIES:
                self._values.clear()
            self._values[key] = (now, value)
        return value

    def clear(self) -> None:
        """Forget everything (after a mutation, so the next page shows it)."""
        with self._lock:
            self._values.clear()
