"""Celery task events from a real worker, as Flower and `celery events` receive them.

A worker process started as the farm starts it (farm.control.localworker)
runs a task sent through the farm's Celery app; an event receiver on the same
broker must see the task sent, received, started and succeeded, each naming
the task and the worker.
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
    # On Redis the event exchange is fanout, i.e. Redis pub/sub: an event published
    # before the receiver's SUBSCRIBE reached Redis is gone, and the subscription is
    # only made inside the first drain_events. Send probe events until one arrives:
    # from then on the receiver is subscribed, however slow the machine.
    probe = uuid.uuid4().hex
    with app.events.default_dispatcher() as dispatcher:
        for _ in range(300):
            dispatcher.send("zapfarm-probe", probe=probe)
            if stop.wait(0.1) or any(e.get("probe") == probe for e in events):
                break
    assert any(e.get("probe") == probe for e in events), "the receiver never subscribed"
    result = app.send_task(PING_TASK, queue=queue)
    assert isinstance(result.get(timeout=60), str)
    task_id = result.id

    def kinds(task: str) -> list[str]:
        return [e["type"] for e in events if e.get("uuid") == task]

    def sent() -> list[dict[str, Any]]:
        return [e for e in events if e.get("uuid") == task_id and e["type"] == "task-sent"]

    for _ in range(300):
        if sent() and "task-succeeded" in kinds(task_id):
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
