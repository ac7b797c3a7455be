"""Infra errors are retried apart from the budget, unrun trials go back to the queue, and
batches the broker lost are sent again: the scheduler against the real Redis.

No worker consumes the test's kernel queue: the test plays the worker's part
by storing each batch's result in the real result backend, exactly as Celery
stores a task's return value, and by deleting a message from its Redis list as
a crash between a worker's pop and its bookkeeping would.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from typing import Any

import pytest
import redis
from celery import Celery
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from farm.control import campaigns
from farm.control.broker import known_task_ids
from farm.control.scheduler import Scheduler, progress, split_attempt
from farm.protocol import TrialResult, kernel_queue
from farm.settings import load_settings
from farm.store.db import ensure_kernel
from farm.store.models import Campaign, Trial
from farm.transport import make_app

pytestmark = [pytest.mark.redis]

TOKEN = "zf1-00000000000000cc~pages=128"


@pytest.fixture
def app() -> Celery:
    return make_app(replace(load_settings(), visibility_timeout_s=960))


@pytest.fixture
def kernel(db_sessions: sessionmaker[Session]) -> str:
    name = f"retry-{uuid.uuid4().hex[:8]}"  # a queue no worker of any test consumes
    with db_sessions.begin() as session:
        ensure_kernel(session, name, "6.1.0-test", "/boot/vmlinuz-test", None, "custom")
    return name


def start_campaign(sessions: sessionmaker[Session], kernel: str, trials: int) -> str:
    name = f"retry-{uuid.uuid4().hex[:6]}"
    spec = campaigns.parse_spec(
        {
            "name": name,
            "kernels": [kernel],
            "concurrency": trials,
            "budget": {"trials": trials},
            "params": {"pages": 128, "cpu_quota_pct": 100},
        }
    )
    with sessions.begin() as session:
        campaigns.transition(campaigns.create(session, spec), "running")
    return name


def rows(sessions: sessionmaker[Session], campaign: str) -> dict[str, Trial]:
    with sessions() as session:
        cid = session.scalars(select(Campaign.id).where(Campaign.name == campaign)).one()
        found = session.scalars(select(Trial).where(Trial.campaign_id == cid)).all()
        return {t.trial_id: t for t in found}


def result(trial: Trial, kernel: str, outcome: str = "infra-error") -> dict[str, Any]:
    now = time.time()
    return TrialResult(
        trial_id=trial.trial_id,
        token=trial.token,
        kernel=kernel,
        worker="test-worker",
        outcome=outcome,  # type: ignore[arg-type]
        error="libvirt: client socket is closed; the domain is unreachable",
        started_at=now,
        finished_at=now,
    ).to_json()


def answer(app: Celery, batch_id: str, value: Any, state: str = "SUCCESS") -> None:
    """What a worker's Celery stores when the batch task returns (or fails)."""
    app.backend.store_result(batch_id, value, state)


def test_infra_errors_are_retried_twice_without_using_budget(
    app: Celery, db_sessions: sessionmaker[Session], kernel: str
) -> None:
    campaign = start_campaign(db_sessions, kernel, trials=2)
    scheduler = Scheduler(app, db_sessions, batch_size=2)
    assert scheduler.tick().sent == 2
    first = rows(db_sessions, campaign)
    victim, other = sorted(first)
    batch = first[victim].batch_id
    assert batch is not None and first[other].batch_id == batch
    answer(app, batch, [result(first[victim], kernel), result(first[other], kernel, "slow")])
    report = scheduler.tick()
    assert (report.recorded, report.retried) == (2, 1)
    for attempt in (1, 2):
        now = rows(db_sessions, campaign)
        retry = now[f"{victim}.r{attempt}"]
        assert retry.status == "running" and retry.token == first[victim].token
        assert retry.batch_id not in (None, batch)
        assert split_attempt(retry.trial_id) == (victim, attempt)
        answer(app, retry.batch_id, [result(retry, kernel)])
        assert scheduler.tick().retried == (1 if attempt == 1 else 0)
    final = rows(db_sessions, campaign)
    assert sorted(final) == sorted([victim, other, f"{victim}.r1", f"{victim}.r2"])
    assert all(t.status == "done" for t in final.values())  # no third retry
    with db_sessions() as session:
        row = session.scalars(select(Campaign).where(Campaign.name == campaign)).one()
        assert row.state["created"] == 2  # retries did not use up the budget
        p = progress(session, row)
    assert (p["infra_errors"], p["retries"], p["done"]) == (3, 2, 1)
    assert p["verdicts"] == {"invalid": 1}  # the slow trial: neither a finding nor infra
    scheduler.tick()
    with db_sessions() as session:
        assert session.scalars(select(Campaign.status).where(Campaign.name == campaign)).one() == (
            "done"
        )


def test_trials_a_batch_did_not_run_are_queued_again_not_recorded(
    app: Celery, db_sessions: sessionmaker[Session], kernel: str
) -> None:
    campaign = start_campaign(db_sessions, kernel, trials=3)
    scheduler = Scheduler(app, db_sessions, batch_size=3)
    scheduler.tick()
    first = rows(db_sessions, campaign)
    ran, *rest = sorted(first)
    batch = first[ran].batch_id
    assert batch is not None
    # the batch hit its soft time limit during its first trial: one result, two never run
    answer(app, batch, [result(first[ran], kernel)])
    report = scheduler.tick()
    assert (report.recorded, report.requeued) == (1, 2)
    now = rows(db_sessions, campaign)
    for trial_id in rest:
        assert now[trial_id].status == "running" and now[trial_id].outcome is None
        assert now[trial_id].batch_id not in (None, batch)  # sent again in a new batch
    assert now[f"{ran}.r1"].status == "running"  # the one that ran: an infra error, retried
    # a batch that failed as a whole (worker lost, hard limit): each trial an infra error
    batch2 = now[rest[0]].batch_id
    assert batch2 is not None
    answer(app, batch2, RuntimeError("WorkerLostError: worker exited"), "FAILURE")
    report = scheduler.tick()
    in_batch2 = [t for t in now.values() if t.batch_id == batch2]
    assert report.recorded == len(in_batch2) and report.retried == len(in_batch2)


def test_a_batch_the_broker_lost_is_sent_again_after_the_grace_period(
    app: Celery, db_sessions: sessionmaker[Session], kernel: str
) -> None:
    campaign = start_campaign(db_sessions, kernel, trials=4)
    scheduler = Scheduler(app, db_sessions, batch_size=2, reconcile_grace_s=2.0)
    scheduler.tick()
    batches = sorted({t.batch_id for t in rows(db_sessions, campaign).values()})
    assert len(batches) == 2 and None not in batches
    queue = kernel_queue(kernel)
    client = redis.Redis.from_url(app.conf.broker_url)
    assert set(batches) <= known_task_ids(app.conf.broker_url, [queue])
    # Redis crashed after a worker popped one message and before it was marked unacked
    lost, kept = batches
    for raw in client.lrange(queue, 0, -1):
        if lost.encode() in raw:
            client.lrem(queue, 1, raw)
    assert lost not in known_task_ids(app.conf.broker_url, [queue])
    assert scheduler.reconcile(now=100.0) == 0  # first seen missing: the grace starts
    assert scheduler.reconcile(now=101.0) == 0  # within the grace
    assert scheduler.reconcile(now=102.5) == 1
    assert {lost, kept} <= known_task_ids(app.conf.broker_url, [queue])
    assert len(client.lrange(queue, 0, -1)) == 2  # the kept one was not sent twice
    # a batch a worker started (backend state STARTED) and Redis then lost is left alone
    for raw in client.lrange(queue, 0, -1):
        if kept.encode() in raw:
            client.lrem(queue, 1, raw)
    app.backend.store_result(kept, None, "STARTED")
    assert scheduler.reconcile(now=200.0) == 0
    assert scheduler.reconcile(now=300.0) == 0
    assert kept not in known_task_ids(app.conf.broker_url, [queue])
    client.delete(queue)
