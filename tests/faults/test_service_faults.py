"""Control-plane services fail under a running campaign: Redis restarts, PostgreSQL goes away.

Real servers the test owns (tests/private_services.py), the real ``farm scheduler``
process and two real Celery worker processes (synthetic executor: the control
plane is what is tested). Each test prints and asserts in flight / recorded /
duplicates / lost.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from private_services import (
    PostgresServer,
    RedisServer,
    in_flight,
    postgres_unavailable,
    start_scheduler,
    stop_process,
    tally,
    wait_for,
)
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from farm.control import campaigns
from farm.control.localworker import LocalWorker
from farm.settings import load_settings
from farm.store.db import ensure_kernel, make_engine, session_factory, upgrade
from farm.store.models import Campaign, Trial
from workers.host import queues_for

pytestmark = [pytest.mark.faults]

TRIALS = 500
# A message a worker had reserved (delivered, not started) when Redis went away cannot be
# given back then; it stays in Redis' "unacked" hash until the visibility timeout (960 s in
# production, so such a trial is delayed, never lost). Lowered so the test sees it come back.
VISIBILITY_S = 20


def queues(kernel: str) -> str:
    """Synthetic workers serve the kernel's queue and its .cpu twin (vCPU-throttled trials)."""
    return ",".join(queues_for([kernel], cpu_control=True))


class ControlPlane:
    """A database, a private Redis, two synthetic workers and a ``farm scheduler``."""

    def __init__(self, tmp: Path, db_url: str, redis: RedisServer) -> None:
        self.tmp = tmp
        self.db_url = db_url
        self.redis = redis
        self.kernel = f"fault-{uuid.uuid4().hex[:6]}"
        upgrade(db_url)
        self.engine = make_engine(db_url)
        self.sessions: sessionmaker[Session] = session_factory(self.engine)
        with self.sessions.begin() as session:
            ensure_kernel(session, self.kernel, "6.1.0-test", "/boot/vmlinuz-test", None, "custom")
        settings = replace(
            load_settings(),
            executor="synthetic",
            cache_dir=tmp / "cache",
            broker_url=redis.url(0),
            result_backend=redis.url(1),
            visibility_timeout_s=VISIBILITY_S,
        )
        self.workers = [
            LocalWorker(settings, queues(self.kernel), log_file=tmp / f"worker{i}.log")
            for i in range(2)
        ]
        self.scheduler_log = tmp / "scheduler.log"
        self.scheduler = None

    def start(self, trials: int = TRIALS) -> str:
        for worker in self.workers:
            worker.start()
        name = f"fault-{uuid.uuid4().hex[:6]}"
        spec = campaigns.parse_spec(
            {"name": name, "kernels": [self.kernel], "budget": {"trials": trials}, "concurrency": 8}
        )
        with self.sessions.begin() as session:
            campaigns.transition(campaigns.create(session, spec), "running")
        self.scheduler = start_scheduler(
            {
                "FARM_DATABASE_URL": self.db_url,
                "FARM_BROKER_URL": self.redis.url(0),
                "FARM_RESULT_BACKEND": self.redis.url(1),
            },
            self.scheduler_log,
        )
        return name

    def done(self, name: str) -> int:
        with self.sessions() as session:
            campaign = session.scalars(select(Campaign).where(Campaign.name == name)).one()
            return sum(
                1
                for s in session.scalars(
                    select(Trial.status).where(Trial.campaign_id == campaign.id)
                )
                if s == "done"
            )

    def verdicts(self, name: str) -> dict[str, int]:
        """Synthetic trials are all clean: an outage must not turn one into an infra-error."""
        with self.sessions() as session:
            campaign = session.scalars(select(Campaign).where(Campaign.name == name)).one()
            rows = session.scalars(select(Trial.verdict).where(Trial.campaign_id == campaign.id))
            return dict(Counter(rows))

    def not_clean(self, name: str) -> list[tuple[str, str | None, str | None]]:
        with self.sessions() as session:
            campaign = session.scalars(select(Campaign).where(Campaign.name == name)).one()
            return [
                tuple(r)
                for r in session.execute(
                    select(Trial.trial_id, Trial.verdict, Trial.error).where(
                        Trial.campaign_id == campaign.id, Trial.verdict != "clean"
                    )
                ).all()
            ]

    def logs(self) -> str:
        parts = [f"--- scheduler\n{self.scheduler_log.read_text(errors='replace')[-4000:]}"]
        parts += [f"--- {w.log_file.name}\n{w.log_tail(30)}" for w in self.workers]
        return "\n".join(parts)

    def close(self) -> None:
        stop_process(self.scheduler)
        for worker in self.workers:
            worker.stop(20)
        self.engine.dispose()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop(signal.SIGKILL)


@pytest.mark.postgres
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["restart", "crash"])
def test_redis_restart_mid_campaign_loses_nothing(
    tmp_path: Path, postgres_url: str, redis_server: RedisServer, how: int
) -> None:
    farm = ControlPlane(tmp_path, postgres_url, redis_server)
    try:
        name = farm.start()
        assert wait_for(lambda: farm.done(name) >= 100, 60, 0.05), farm.logs()
        at_fault = in_flight(farm.sessions)
        assert farm.done(name) < TRIALS  # mid-campaign
        redis_server.stop(how)
        time.sleep(1.5)  # workers retry the broker after 2 s, then 4 s more
        redis_server.start()
        finished = wait_for(lambda: farm.done(name) == TRIALS, 120)
        result = tally(
            f"redis {signal.Signals(how).name}",
            farm.sessions,
            [name],
            in_flight_at_fault=at_fault,
            worker_logs=[w.log_file for w in farm.workers],
        )
        result.show()
        assert finished, farm.logs()
        assert farm.scheduler is not None and farm.scheduler.poll() is None, farm.logs()
        assert all(w.alive() for w in farm.workers), farm.logs()
        assert (result.lost, result.duplicates, result.recorded) == (0, 0, TRIALS)
        assert farm.verdicts(name) == {"clean": TRIALS}, farm.not_clean(name)
    finally:
        farm.close()


@pytest.fixture
def private_postgres() -> Iterator[PostgresServer]:
    reason = postgres_unavailable()
    if reason:
        pytest.skip(reason)
    server = PostgresServer().init().start()
    try:
        yield server
    finally:
        server.close()


OUTAGE_S = 30


def test_postgres_gone_for_30_s_mid_campaign_loses_nothing(
    tmp_path: Path, private_postgres: PostgresServer, redis_server: RedisServer
) -> None:
    """The database stops (fast shutdown: sessions killed) and comes back 30 s later."""
    private_postgres.create_database("farm")
    farm = ControlPlane(tmp_path, private_postgres.url("farm"), redis_server)
    try:
        name = farm.start()
        assert wait_for(lambda: farm.done(name) >= 100, 60, 0.05), farm.logs()
        at_fault = in_flight(farm.sessions)
        assert farm.done(name) < TRIALS  # mid-campaign
        private_postgres.stop("fast")
        down_since = time.monotonic()
        time.sleep(OUTAGE_S)
        assert farm.scheduler is not None and farm.scheduler.poll() is None, farm.logs()
        private_postgres.start()
        back_at = time.monotonic()
        finished = wait_for(lambda: farm.done(name) == TRIALS, 120)
        result = tally(
            "postgres down 30 s",
            farm.sessions,
            [name],
            in_flight_at_fault=at_fault,
            worker_logs=[w.log_file for w in farm.workers],
        )
        result.show()
        print(
            f"[postgres down 30 s] outage {back_at - down_since:.0f} s, campaign done "
            f"{time.monotonic() - back_at:.1f} s after the database came back"
        )
        assert finished, farm.logs()
        assert farm.scheduler.poll() is None, farm.logs()
        assert (result.lost, result.duplicates, result.recorded) == (0, 0, TRIALS)
        assert farm.verdicts(name) == {"clean": TRIALS}, farm.not_clean(name)
    finally:
        farm.close()
