"""/metrics scraped and parsed with prometheus_client's own parser, against a filled database.

Every number is checked against the database (or the broker) read another way:
a metric that is present but wrong fails here.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator

import pytest
import redis
from conftest import Filled
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from farm.protocol import kernel_queue
from farm.store import db
from farm.store.models import Kernel, Trial
from farm.web.app import create_app

pytestmark = pytest.mark.redis
TEST_BROKER_URL = os.environ["FARM_BROKER_URL"]  # the suite's own Redis database (conftest)


@pytest.fixture
def scrape(web_db: Filled) -> Iterator[dict[str, list[tuple[dict[str, str], float]]]]:
    """name -> [(labels, value)] of one scrape, with two trial batches waiting in the broker."""
    broker = redis.Redis.from_url(TEST_BROKER_URL)
    queue = kernel_queue("debian-6.1.0-26")
    broker.delete(queue, queue + ".cpu")
    broker.lpush(queue, b"{}", b"{}")
    broker.lpush(queue + ".cpu", b"{}")
    app = create_app(web_db.url, cache_ttl=0, broker_url=TEST_BROKER_URL)
    try:
        with TestClient(app) as client:
            response = client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=")
        samples: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                samples.setdefault(sample.name, []).append((sample.labels, sample.value))
        yield samples
    finally:
        app.state.web.engine.dispose()
        broker.delete(queue, queue + ".cpu")
        broker.close()


def by(samples: list[tuple[dict[str, str], float]], *keys: str) -> dict[tuple[str, ...], float]:
    return {tuple(labels[k] for k in keys): value for labels, value in samples}


def test_metrics_match_the_database(
    scrape: dict[str, list[tuple[dict[str, str], float]]], web_db: Filled
) -> None:
    engine = db.make_engine(web_db.url)
    try:
        with db.session_factory(engine)() as session:
            rows = session.execute(
                select(Kernel.name, Trial.status, Trial.verdict, Trial.booted, Trial.result).join(
                    Kernel
                )
            ).all()
    finally:
        engine.dispose()
    done = Counter((k, v or "none") for k, status, v, _, _ in rows if status == "done")
    assert by(scrape["zapfarm_trials_total"], "kernel", "verdict") == dict(done)
    assert sum(done.values()) > 40 and len({v for _, v in done}) >= 5  # a real spread of verdicts
    in_flight = by(scrape["zapfarm_trials_in_flight"], "kernel", "status")
    want = Counter((k, status) for k, status, *_ in rows if status != "done")
    assert {key: n for key, n in in_flight.items() if n} == want
    assert in_flight[("debian-6.1.0-26", "queued")] == 2  # nightly-q0, nightly-q1
    assert in_flight[("debian-6.1.0-26", "running")] == 1
    # the broker's queues: two batches on the kernel's queue, one on its .cpu twin
    queues = by(scrape["zapfarm_broker_queue_messages"], "queue")
    assert queues[(kernel_queue("debian-6.1.0-26"),)] == 2
    assert queues[(kernel_queue("debian-6.1.0-26") + ".cpu",)] == 1
    assert "zapfarm_scrape_errors_total" not in scrape
    assert scrape["zapfarm_workers_alive"] == [({}, 1.0)]  # host-a, heard from just now
    # boots: one per booted trial, and the histogram holds their boot seconds
    booted = [
        (k, r["guest"]["boot_seconds"]) for k, _, _, b, r in rows if b and r and r.get("guest")
    ]
    assert booted
    boots = Counter(k for k, _, _, b, _ in rows if b)
    assert by(scrape["zapfarm_guest_boots_total"], "kernel") == {(k,): n for k, n in boots.items()}
    buckets = by(scrape["zapfarm_guest_boot_seconds_bucket"], "le")
    assert buckets[("+Inf",)] == len(booted)
    assert buckets[("15.0",)] == sum(1 for _, s in booted if s <= 15)
    assert scrape["zapfarm_guest_boot_seconds_sum"][0][1] == pytest.approx(
        sum(s for _, s in booted)
    )
    lag = by(scrape["zapfarm_recorder_lag_seconds"], "stat")
    assert set(lag) == {("max",), ("median",)} and lag[("max",)] >= lag[("median",)] >= 0


def test_a_broker_outage_is_counted_not_fatal(web_db: Filled) -> None:
    app = create_app(web_db.url, cache_ttl=0, broker_url="redis://127.0.0.1:1/0")
    try:
        with TestClient(app) as client:
            text = client.get("/metrics").text
    finally:
        app.state.web.engine.dispose()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["zapfarm_scrape_errors"].samples[0].labels == {"part": "broker"}
    assert "zapfarm_trials" in families and "zapfarm_broker_queue_messages" not in families
