"""A small cache for aggregates over the trials table, refreshed in the background.

Counting a campaign's verdicts or a kernel's trials reads every matching index
entry; with millions of trials that is tens to hundreds of milliseconds per
aggregate, too slow to repeat on every page load. So aggregates are kept for
``ttl`` seconds; after that the stale value is still served (the page says how
old it is) while one background thread recomputes it with its own session, so
only the very first visitor of a campaign waits for the count. A value older
than ``max_stale`` is recomputed in the request instead: after a quiet night
nobody is shown yesterday's numbers. Single rows and keyset pages are never
cached: they are cheap and must be exact.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy.orm import Session, sessionmaker

T = TypeVar("T")
log = logging.getLogger(__name__)

DEFAULT_TTL_S = 30.0
MAX_STALE_FACTOR = 20  # serve stale values up to 20 x ttl old (10 min at the default)
MAX_ENTRIES = 4096


@dataclass(frozen=True)
class _Entry:
    at: float  # monotonic clock
    when: datetime  # wall clock, shown on pages
    value: Any


class TTLCache:
    """Values by key; ``ttl <= 0`` turns caching off (tests, ``farm web --cache-ttl 0``)."""

    def __init__(
        self,
        ttl: float = DEFAULT_TTL_S,
        sessions: sessionmaker[Session] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.max_stale = ttl * MAX_STALE_FACTOR
        self._sessions = sessions  # None: no background refresh (recompute in the request)
        self._clock = clock
        self._values: dict[Hashable, _Entry] = {}
        self._refreshing: set[Hashable] = set()
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    def get(self, key: Hashable, compute: Callable[[Session], T], session: Session) -> T:
        """The value for ``key``; ``compute(session)`` makes it when there is none."""
        if self.ttl <= 0:
            return compute(session)
        now = self._clock()
        with self._lock:
            hit = self._values.get(key)
        if hit is not None:
            age = now - hit.at
            if age < self.ttl:
                return hit.value  # type: ignore[no-any-return]
            if age < self.max_stale and self._refresh_later(key, compute):
                return hit.value  # type: ignore[no-any-return]
        value = compute(session)
        self._store(key, value)
        return value

    def computed_at(self, key: Hashable) -> datetime | None:
        """When the value a page shows was computed (None: computed for this request)."""
        with self._lock:
            hit = self._values.get(key)
        return hit.when if hit is not None else None

    def clear(self) -> None:
        """Forget everything (after a mutation, so the next page shows it)."""
        with self._lock:
            self._values.clear()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _store(self, key: Hashable, value: Any) -> None:
        with self._lock:
            if len(self._values) >= MAX_ENTRIES:
                self._values.clear()
            self._values[key] = _Entry(self._clock(), datetime.now(UTC), value)

    def _refresh_later(self, key: Hashable, compute: Callable[[Session], Any]) -> bool:
        """Start recomputing ``key`` in the background; False if that is not possible."""
        if self._sessions is None:
            return False
        with self._lock:
            if key in self._refreshing:
                return True
            self._refreshing.add(key)
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="web-cache")
            pool = self._pool
        pool.submit(self._refresh, key, compute)
        return True

    def _refresh(self, key: Hashable, compute: Callable[[Session], Any]) -> None:
        assert self._sessions is not None
        try:
            with self._sessions() as session:
                self._store(key, compute(session))
        except Exception:  # the stale value stays; the next request past max_stale retries
            log.exception("refreshing cached aggregate %r failed", key)
        finally:
            with self._lock:
                self._refreshing.discard(key)
