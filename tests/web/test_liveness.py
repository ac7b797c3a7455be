"""A campaign whose kernel no live worker serves says so, with the fix, in CLI, web and API.

The workers are real: a Celery worker (synthetic executor, no guests) consumes
one kernel's queues, and the scheduler's own heartbeat records it, as in production.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from farm.cli import campaign as campaign_cli
from farm.cli.main import main
from farm.control import campaigns
from farm.control.liveness import (
    ALIVE_AFTER,
    is_live,
    queues_of,
    serves,
    unserved_kernels,
    unserved_message,
)
from farm.control.localworker import LocalWorker
from farm.control.scheduler import Scheduler
from farm.protocol import kernel_queue
from farm.settings import load_settings
from farm.store import db
from farm.store.models import Worker
from farm.transport import make_app
from farm.web import create_app
from workers.host import queues_for

SERVED, UNSERVED = "live-k-served", "live-k-orphan"
NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def test_live_means_heard_within_alive_after() -> None:
    assert is_live(NOW - ALIVE_AFTER, NOW)
    assert not is_live(NOW - ALIVE_AFTER - timedelta(seconds=1), NOW)
    assert not is_live(None, NOW)
    assert is_live((NOW - timedelta(seconds=5)).replace(tzinfo=None), NOW)  # naive rows are UTC


def test_a_worker_serves_a_kernel_through_its_queue_or_the_cpu_twin() -> None:
    assert serves([kernel_queue("k1")], "k1")
    assert serves([kernel_queue("k1") + ".cpu"], "k1")
    assert not serves([kernel_queue("k10"), kernel_queue("k")], "k1")
    assert not serves([], "k1")
    # the heartbeat's JSON is read defensively: junk serves nothing and breaks nothing
    assert queues_of({"queues": [kernel_queue("k1"), 7, None]}) == {kernel_queue("k1")}
    assert queues_of({"queues": "zapfarm.k.k1"}) == frozenset()
    assert queues_of(None) == frozenset()


def test_message_names_the_fix_and_quotes_the_kernel() -> None:
    assert unserved_message("k1") == (
        "no live worker serves kernel k1: start `farm worker --kernel k1` on a host that has it"
    )
    assert "--kernel 'k 1;x'" in unserved_message("k 1;x")
    assert "is it running?" in unserved_message("k1", any_live=False)


@dataclass
class Farm:
    url: str
    sessions: sessionmaker[Session]
    worker: LocalWorker


def _heard(sessions: sessionmaker[Session], worker: LocalWorker) -> bool:
    with sessions() as s:
        return s.scalar(select(Worker.id).where(Worker.name == worker.name)) is not None


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    """A migrated SQLite farm with two kernels, one of them served by a live worker."""
    tmp = tmp_path_factory.mktemp("liveness")
    url = f"sqlite:///{tmp / 'farm.sqlite'}"
    db.upgrade(url)
    engine = db.make_engine(url)
    sessions = db.session_factory(engine)
    with sessions.begin() as s:
        for name in (SERVED, UNSERVED):
            db.ensure_kernel(s, name, "6.1.0-test", "/boot/vmlinuz-test", None, "custom")
    settings = replace(load_settings(), executor="synthetic", cache_dir=tmp / "cache")
    queues = ",".join(queues_for([SERVED], cpu_control=True))
    worker = LocalWorker(settings, queues, log_file=tmp / "worker.log").start()
    try:
        scheduler = Scheduler(make_app(settings), sessions)
        deadline = time.monotonic() + 90
        while not _heard(sessions, worker):  # the scheduler's heartbeat, until the worker answers
            assert worker.alive(), worker.log_tail()
            assert time.monotonic() < deadline, f"worker never answered: {worker.log_tail()}"
            scheduler.heartbeat()
        yield Farm(url, sessions, worker)
    finally:
        worker.stop()
        engine.dispose()


def _campaign(farm: Farm, name: str, status: str = "running") -> None:
    spec = campaigns.parse_spec(
        {"name": name, "kernels": [SERVED, UNSERVED], "budget": {"trials": 30}}
    )
    with farm.sessions.begin() as s:
        row = campaigns.create(s, spec)
        if status != "created":
            campaigns.transition(row, status)


def _status(farm: Farm, name: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("FARM_DATABASE_URL", farm.url)
    monkeypatch.setattr(campaign_cli.out, "width", 400)  # one line per row: no wrapping
    result = CliRunner().invoke(main, ["campaign", "status", name])
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


@pytest.mark.redis
def test_cli_web_and_api_name_the_kernel_no_live_worker_serves(
    farm: Farm, monkeypatch: pytest.MonkeyPatch
) -> None:
    _campaign(farm, "stalls")
    with farm.sessions() as s:
        assert unserved_kernels(s, "running", [SERVED, UNSERVED]) == {
            UNSERVED: unserved_message(UNSERVED)
        }
    expected = unserved_message(UNSERVED)

    out = _status(farm, "stalls", monkeypatch)
    assert expected in out
    assert f"serves kernel {SERVED}" not in out

    app = create_app(farm.url, cache_ttl=0)
    with TestClient(app) as client:
        detail = client.get("/api/campaigns/stalls").json()
        assert detail["unserved_kernels"] == [UNSERVED]
        assert detail["warnings"] == [expected]
        page = client.get("/campaigns/stalls").text
        assert '<p class="alert" role="alert">' + expected + "</p>" in page
        doc = client.get("/openapi.json").json()
        assert "unserved_kernels" in doc["components"]["schemas"]["CampaignDetail"]["properties"]

        # a stopped campaign waits for nobody: nothing to say
        with farm.sessions.begin() as s:
            campaigns.act(s, "stalls", "stop")
        stopped = client.get("/api/campaigns/stalls").json()
        assert stopped["unserved_kernels"] == [] and stopped["warnings"] == []
        assert 'class="alert"' not in client.get("/campaigns/stalls").text
    app.state.web.engine.dispose()
    assert "no live worker" not in _status(farm, "stalls", monkeypatch)


@pytest.mark.redis
def test_a_worker_not_heard_from_is_not_live(farm: Farm, monkeypatch: pytest.MonkeyPatch) -> None:
    _campaign(farm, "waits", status="created")
    with farm.sessions.begin() as s:  # the last heartbeat answer, ALIVE_AFTER and a bit ago
        s.execute(
            update(Worker)
            .where(Worker.name == farm.worker.name)
            .values(last_seen=datetime.now(UTC) - ALIVE_AFTER - timedelta(seconds=30))
        )
    out = _status(farm, "waits", monkeypatch)
    for kernel in (SERVED, UNSERVED):
        assert unserved_message(kernel, any_live=False) in out
    app = create_app(farm.url, cache_ttl=0)
    with TestClient(app) as client:
        assert client.get("/api/campaigns/waits").json()["unserved_kernels"] == [SERVED, UNSERVED]
        workers = client.get("/api/workers").json()["items"]
        assert [w["alive"] for w in workers if w["name"] == farm.worker.name] == [False]
    app.state.web.engine.dispose()
    # the next heartbeat that reaches it brings it back, and with it the kernel it serves
    scheduler = Scheduler(make_app(load_settings()), farm.sessions)
    deadline = time.monotonic() + 30
    while farm.worker.name not in scheduler.heartbeat():
        assert time.monotonic() < deadline, farm.worker.log_tail()
    with farm.sessions() as s:
        assert list(unserved_kernels(s, "created", [SERVED, UNSERVED])) == [UNSERVED]


def test_unserved_kernels_in_order_without_duplicates(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'farm.sqlite'}"
    db.upgrade(url)
    engine = db.make_engine(url)
    sessions = db.session_factory(engine)
    with sessions.begin() as s:
        s.add(Worker(name="w1", last_seen=NOW, info={"queues": [kernel_queue("b")]}))
        s.add(Worker(name="w0", last_seen=NOW - ALIVE_AFTER * 2, info={"queues": ["zapfarm.k.a"]}))
    with sessions() as s:
        assert list(unserved_kernels(s, "paused", ["c", "a", "b", "c"], NOW)) == ["c", "a"]
        assert unserved_kernels(s, "done", ["c"], NOW) == {}
        assert "is it running" not in unserved_kernels(s, "running", ["a"], NOW)["a"]
    engine.dispose()
