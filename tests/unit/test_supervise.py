"""farm scheduler's supervision: outages rebuild the scheduler, bugs do not hide, resumes."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import redis
from sqlalchemy.exc import OperationalError

from farm.control.supervise import is_outage, run_supervised
from farm.store.db import DatabaseUnavailable


class Flaky:
    """Scheduler stand-in: each build runs the next step (raise, or run until stopped)."""

    def __init__(self, steps: list[BaseException | None]) -> None:
        self.steps = steps
        self.builds = 0

    def build(self) -> Flaky:
        self.builds += 1
        return self

    def run(self, stop: Callable[[], bool], idle_s: float = 0.2) -> None:
        step = self.steps.pop(0) if self.steps else None
        if step is not None:
            raise step
        while not stop():
            time.sleep(0.01)


def test_outages_are_told_from_bugs() -> None:
    assert is_outage(redis.ConnectionError("refused"))
    assert is_outage(OperationalError("SELECT 1", {}, Exception("server closed")))
    assert is_outage(DatabaseUnavailable("PostgreSQL refused"))
    assert not is_outage(KeyError("bug"))


def test_each_outage_rebuilds_the_scheduler_with_backoff() -> None:
    flaky = Flaky([redis.ConnectionError("down"), DatabaseUnavailable("down"), None])
    slept: list[float] = []
    deadline = time.monotonic() + 1.0
    restarts = run_supervised(
        flaky.build,
        stop=lambda: time.monotonic() > deadline,
        backoff_s=(0.2, 0.4),
        sleep=slept.append,
    )
    assert (restarts, flaky.builds) == (2, 3)
    assert sum(slept) == pytest.approx(0.2 + 0.4)  # 0.2 s, then doubled


def test_a_bug_is_not_swallowed() -> None:
    flaky = Flaky([KeyError("bug")])
    with pytest.raises(KeyError):
        run_supervised(flaky.build, stop=lambda: False)
