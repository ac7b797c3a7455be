"""Keep ``farm scheduler`` running through broker and database outages.

The scheduler keeps all of its state in the database, so the safe answer to a
lost connection is the answer to a crash: drop the scheduler object and build a
new one, whose start-up (``Scheduler._resume``) adopts every batch in flight and
re-sends the batches the broker never saw. This loop does that in-process, with
a capped backoff while Redis or PostgreSQL is down, instead of exiting and
relying on systemd's ``Restart=``. Errors that are not outages propagate.

It also resumes every ``resume_every_s`` without any error: a Redis restart can
lose a message without the scheduler noticing (a worker popped it and had not
yet recorded it as unacknowledged when Redis died), and the batch would wait for
its result forever; resuming finds it unknown to the broker and sends it again.
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
RESUME_EVERY_S = 300.0


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
    resume_every_s: float | None = RESUME_EVERY_S,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Run ``build()``'s scheduler until ``stop()``; rebuild it after each outage and
    every ``resume_every_s`` (None: never). Returns how many times it was rebuilt."""
    first, cap = backoff_s
    delay = first
    restarts = 0
    while not stop():
        started = time.monotonic()
        due = started + resume_every_s if resume_every_s else float("inf")
        try:
            build().run(stop=lambda due=due: stop() or time.monotonic() >= due)
            if not stop():
                restarts += 1
                log.debug("periodic resume from the database")
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
