"""Celery task events from a real worker, as Flower and `celery events` receive them.

A worker process started as the farm starts it (farm.control.localworker)
runs a task sent through the farm's Celery app; an event receiver on the same
broker must see the task sent, received, started and succeeded, each naming
the task and the worker. With task events off (Celery's default) it sees none.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from farm.control.localworker import LocalWorker
from farm.protocol import PING_TASK
from farm.settings import load_settings

pytestmark = pytest.mark.redis


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[tuple[LocalWorker, str]]:
    queue = f"zapfarm.k.events-{uuid.uuid4().hex[:6]}"
    settings = replace(load_settings(), executor="synthetic", cache_dir=tmp_path / "cache")
    w = LocalWorker(settings, queue, log_file=tmp_path / "worker.log").start()
    yield w, queue
    w.stop()


def test_flower_sees_workers_and_tasks(worker: tuple[LocalWorker, str]) -> None:
    from workers.celery_app import app

    local, queue = worker
    assert app.conf.worker_send_task_events is True
    assert app.conf.task_send_sent_event is True
    events: list[dict[str, Any]] = []
    ready = threading.Event()
    stop = threading.Event()

    def capture() -> None:
        with app.connection_for_read() as conn:
            receiver = app.events.Receiver(conn, handlers={"*": events.append})
            # the event queue exists and is bound once the consumer context is entered:
            # only then is it safe to send (events published before are not queued)
            with receiver.consumer_context() as (connection, _channel, _consumers):
                ready.set()
                while not stop.is_set():
                    try:
                        connection.drain_events(timeout=0.5)
                    except TimeoutError:  # socket.timeout: nothing this half second
                        continue

    thread = threading.Thread(target=capture, daemon=True)
    thread.start()
    assert ready.wait(10)
    # Celery's event dispatcher may buffer the very first task-sent until its producer
    # connection is up and flush it with the next event it sends: send two tasks
    results = [app.send_task(PING_TASK, queue=queue) for _ in range(2)]
    assert all(isinstance(r.get(timeout=60), str) for r in results)
    ids = {r.id for r in results}
    task_id = results[-1].id

    def kinds(uuid: str) -> list[str]:
        return [e["type"] for e in events if e.get("uuid") == uuid]

    def sent() -> list[dict[str, Any]]:
        return [e for e in events if e.get("uuid") in ids and e["type"] == "task-sent"]

    for _ in range(300):
        if sent() and all("task-succeeded" in kinds(i) for i in ids):
            break
        stop.wait(0.1)
    stop.set()
    thread.join(5)
    seen = kinds(task_id)
    assert sent(), [e["type"] for e in events]
    assert {"task-received", "task-started", "task-succeeded"} <= set(seen), seen
    event = sent()[0]
    assert event["name"] == PING_TASK and event["queue"] == queue
    done = next(e for e in events if e.get("uuid") == task_id and e["type"] == "task-succeeded")
    assert done["hostname"] == local.name
