"""Keep ``farm scheduler`` running through broker and database outages.

The scheduler keeps all of its state in the database, so the safe answer to a
lost connection is the answer to a crash: drop the scheduler object and build a
new one, whose start-up (``Scheduler._resume``) adopts every batch in flight and
re-sends the batches the broker never saw. This loop does that in-process, with
a capped backoff while Redis or PostgreSQL is down, instead of exiting and
relying on systemd's ``Restart=``. Errors that are not outages propagate.

A batch whose message Redis lost without any error (a worker popped it and had
not yet recorded it as unacknowledged when Redis died) is found by the
scheduler's own reconcile step (``Scheduler.reconcile``), not by rebuilding.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

import redis
from kombu.exceptions import OperationalError as BrokerOperationalError
from sqlalchemy.exc import DBAPIError, InterfaceError
from sqlalchemy.exc import OperationalError as DatabaseOperationalError

from farm.store.db import DatabaseUnavailable

log = logging.getLogger(__name__)

OUTAGES: tuple[type[BaseException], ...] = (
    redis.RedisError,  # result backend (and broker, through kombu)
    BrokerOperationalError,  # kombu: publishing failed after its own retries
    DatabaseOperationalError,  # server gone, connection reset, admin shutdown
    InterfaceError,
    DatabaseUnavailable,  # farm.store.db: could not connect at all
    ConnectionError,
    TimeoutError,
)
HEALTHY_AFTER_S = 60.0  # a scheduler that ran this long resets the backoff


class Runnable(Protocol):
    def run(self, stop: Callable[[], bool], idle_s: float = ...) -> None: ...


def is_outage(exc: BaseException) -> bool:
    """A lost or refused connection to Redis or the database (not a bug)."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, OUTAGES)


def run_supervised(
    build: Callable[[], Runnable],
    stop: Callable[[], bool],
    *,
    backoff_s: tuple[float, float] = (1.0, 10.0),
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Run ``build()``'s scheduler until ``stop()``; rebuild it after each outage.
    Returns how many times it was rebuilt."""
    first, cap = backoff_s
    delay = first
    restarts = 0
    while not stop():
        started = time.monotonic()
        try:
            build().run(stop=stop)
            continue
        except Exception as exc:
            if not is_outage(exc):
                raise
            if time.monotonic() - started > HEALTHY_AFTER_S:
                delay = first
            restarts += 1
            log.warning(
                "scheduler lost a service (%s: %s); resuming from the database in %.0f s",
                type(exc).__name__,
                str(exc).splitlines()[0][:300] if str(exc) else "",
                delay,
            )
            waited = 0.0
            while waited < delay and not stop():
                sleep(0.2)
                waited += 0.2
            delay = min(cap, delay * 2)
    return restarts
