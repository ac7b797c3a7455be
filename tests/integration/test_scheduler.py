"""The scheduler against real Redis, Celery workers and PostgreSQL (guests replaced by the
synthetic executor, so the control plane is what is tested)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import selectinload

from farm.control import campaigns
from farm.control.localworker import LocalWorker
from farm.control.scheduler import Scheduler
from farm.protocol import kernel_queue
from farm.settings import load_settings
from farm.store.db import ensure_kernel, make_engine, session_factory, upgrade
from farm.store.models import Campaign, Trial, Worker
from workers.host import queues_for

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

KERNELS = ("test-kernel-a", "test-kernel-b")


@pytest.fixture
def farm_db(postgres_url: str, tmp_path: Path) -> Iterator[tuple[str, object]]:
    upgrade(postgres_url)
    engine = make_engine(postgres_url)
    sessions = session_factory(engine)
    with sessions.begin() as session:
        for name in KERNELS:
            ensure_kernel(session, name, "6.1.0-test", "/boot/vmlinuz-test", None, "custom")
    yield postgres_url, sessions
    engine.dispose()


@pytest.fixture
def synthetic_workers(tmp_path: Path) -> Iterator[LocalWorker]:
    settings = replace(load_settings(), executor="synthetic", cache_dir=tmp_path / "cache")
    queues = ",".join(queues_for(list(KERNELS), cpu_control=True))  # synthetic: no real quota
    worker = LocalWorker(settings, queues, concurrency=2, log_file=tmp_path / "worker.log")
    worker.start()
    yield worker
    worker.stop()


def make_campaign(sessions: object, trials: int, **extra: object) -> str:
    name = f"sched-{uuid.uuid4().hex[:6]}"
    spec = campaigns.parse_spec(
        {"name": name, "kernels": list(KERNELS), "budget": {"trials": trials}, **extra}
    )
    with sessions.begin() as session:  # type: ignore[attr-defined]
        campaigns.transition(campaigns.create(session, spec), "running")
    return name


def campaign_rows(sessions: object, name: str) -> tuple[str, list[Trial]]:
    with sessions() as session:  # type: ignore[operator]
        row = session.scalars(select(Campaign).where(Campaign.name == name)).one()
        trials = session.scalars(
            select(Trial).where(Trial.campaign_id == row.id).options(selectinload(Trial.kernel))
        ).all()
        return row.status, list(trials)


def runs_per_trial(log: Path) -> Counter[str]:
    return Counter(re.findall(r"running trial (\S+)", log.read_text(errors="replace")))


def start_scheduler(db_url: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "FARM_DATABASE_URL": db_url}
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "farm.cli.main", "scheduler", "--batch-size", "3"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def wait_for(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.2)
    return False


def test_restarting_the_scheduler_loses_and_repeats_nothing(
    farm_db: tuple[str, object], synthetic_workers: LocalWorker, tmp_path: Path
) -> None:
    db_url, sessions = farm_db
    name = make_campaign(sessions, 60, concurrency=6, search="thompson")
    log = tmp_path / "scheduler.log"

    def done_count() -> int:
        return sum(t.status == "done" for t in campaign_rows(sessions, name)[1])

    first = start_scheduler(db_url, log)
    try:
        assert wait_for(lambda: done_count() >= 15, 60), log.read_text()
    finally:
        first.send_signal(signal.SIGKILL)  # no goodbye: state must already be in the database
        first.wait(10)
    killed_at = done_count()
    assert killed_at < 60
    second = start_scheduler(db_url, log)
    try:
        assert wait_for(lambda: campaign_rows(sessions, name)[0] == "done", 90), log.read_text()
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(20)

    status, trials = campaign_rows(sessions, name)
    assert status == "done"
    assert sorted(t.trial_id for t in trials) == [f"{name}-{n:06d}" for n in range(60)]
    assert all(t.status == "done" and t.verdict == "clean" for t in trials)
    assert Counter(t.kernel.name for t in trials) == {KERNELS[0]: 30, KERNELS[1]: 30}
    runs = runs_per_trial(tmp_path / "worker.log")
    assert set(runs) == {t.trial_id for t in trials}, "a trial was lost"
    assert max(runs.values()) == 1, f"trials ran twice: {[k for k, v in runs.items() if v > 1]}"


def test_backpressure_heartbeats_and_pause(
    farm_db: tuple[str, object], synthetic_workers: LocalWorker
) -> None:
    _, sessions = farm_db
    from workers.celery_app import app

    name = make_campaign(sessions, 12, concurrency=4)
    scheduler = Scheduler(app, sessions, batch_size=2)  # type: ignore[arg-type]
    report = scheduler.tick()
    assert report.created == 4 and report.sent == 4  # never more than concurrency in flight
    status, trials = campaign_rows(sessions, name)
    assert sum(t.status != "done" for t in trials) == 4
    with sessions.begin() as session:  # type: ignore[attr-defined]
        campaigns.act(session, name, "pause")
    assert wait_for(lambda: (scheduler.tick(), not scheduler.pending)[1], 30)
    status, trials = campaign_rows(sessions, name)
    assert status == "paused" and len(trials) == 4  # paused: what was in flight finished, no more
    with sessions.begin() as session:  # type: ignore[attr-defined]
        campaigns.act(session, name, "resume")
    assert wait_for(lambda: (scheduler.tick(), campaign_rows(sessions, name)[0] == "done")[1], 60)
    assert len(campaign_rows(sessions, name)[1]) == 12
    assert wait_for(lambda: scheduler.heartbeat() != [], 20)
    with sessions() as session:  # type: ignore[operator]
        workers = session.scalars(select(Worker)).all()
        assert any(kernel_queue(KERNELS[0]) in w.info["queues"] for w in workers)
        assert session.scalar(select(func.count()).select_from(Worker)) >= 1


def test_one_writer_per_scheduler_the_heartbeat_thread_only_asks(
    sqlite_url: str, synthetic_workers: LocalWorker
) -> None:
    """Two writers' transactions in one process lock each other out on SQLite (a scheduler
    restarted in-process inherited its predecessor's heartbeat thread): the thread asks the
    workers, the tick writes their answer."""
    import threading

    from farm.transport import make_app

    upgrade(sqlite_url)
    engine = make_engine(sqlite_url)
    sessions = session_factory(engine)
    scheduler = Scheduler(make_app(load_settings()), sessions)
    assert wait_for(lambda: scheduler.heartbeat() != [], 20)  # a worker answers
    with sessions() as session:
        seen = session.scalars(select(Worker.last_seen)).one()
    with engine.begin() as writer:  # another transaction holds SQLite's write lock...
        writer.execute(Worker.__table__.update().values(info={"queues": []}))
        poll = threading.Thread(target=scheduler._poll_workers)
        poll.start()
        poll.join(15)  # ...and the heartbeat does not wait for it (busy timeout: 30 s)
        assert not poll.is_alive(), "the heartbeat thread waited for the database"
    scheduler.tick()  # the tick writes what the thread heard
    with sessions() as session:
        worker = session.scalars(select(Worker)).one()
    assert worker.last_seen > seen and worker.info["queues"] != []
    engine.dispose()
