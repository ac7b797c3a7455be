"""Dispatch throughput: trials per second from the scheduler through Redis and Celery
into PostgreSQL, with the synthetic executor (no guests), against a bare no-op
Celery round trip as the baseline. Prints JSON.

    .venv/bin/python bench/dispatch.py [--trials 6000] [--batch 64] [--workers 2]

Needs the Redis at 127.0.0.1:6379 and the PostgreSQL at 127.0.0.1:5432; it
creates and drops its own database.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import time
import uuid
from dataclasses import replace
from pathlib import Path

import psycopg
from sqlalchemy import func, select

from farm.control import campaigns
from farm.control.localworker import LocalWorker
from farm.control.scheduler import Scheduler
from farm.protocol import PING_TASK, kernel_queue
from farm.settings import load_settings
from farm.store.db import ensure_kernel, make_engine, session_factory, upgrade
from farm.store.models import Trial
from workers.host import queues_for

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def baseline(app: object, queue: str, n: int) -> float:
    """Round trips/s of a no-op task, sent all at once and fetched (acks_late, prefetch 1)."""
    started = time.perf_counter()
    handles = [app.send_task(PING_TASK, queue=queue) for _ in range(n)]  # type: ignore[attr-defined]
    for h in handles:
        h.get(timeout=60)
        h.forget()
    return n / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=6000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--baseline", type=int, default=2000)
    args = parser.parse_args()

    db = f"zapfarm_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{db}"
    tmp = Path("/tmp") / db
    settings = replace(load_settings(), executor="synthetic", cache_dir=tmp)
    kernel = "bench-kernel"
    queue = kernel_queue(kernel)
    queues = ",".join(queues_for([kernel], cpu_control=True))  # synthetic: no real vCPU quota
    worker = LocalWorker(settings, queues, concurrency=args.workers, log_file=tmp / "worker.log")
    try:
        upgrade(url)
        engine = make_engine(url)
        sessions = session_factory(engine)
        from workers.celery_app import app

        worker.start()
        baseline(app, queue, 50)  # warm-up: the worker processes are up and connected
        noop = baseline(app, queue, args.baseline)

        with sessions.begin() as session:
            ensure_kernel(session, kernel, "0", "/boot/vmlinuz-bench", None, "custom")
            spec = campaigns.parse_spec(
                {
                    "name": "bench",
                    "kernels": [kernel],
                    "concurrency": args.batch * args.workers * 4,
                    "budget": {"trials": args.trials},
                }
            )
            campaigns.transition(campaigns.create(session, spec), "running")
        # synthetic trials take no time: lift the batch budget (boot + deadlines within the
        # visibility timeout, farm/timing.py) so that --batch is what travels
        app.conf.broker_transport_options = {
            **app.conf.broker_transport_options,
            "visibility_timeout": 10**7,
        }
        scheduler = Scheduler(app, sessions, batch_size=args.batch)
        started = time.perf_counter()
        done = 0
        while done < args.trials and time.perf_counter() - started < 300:
            done += scheduler.tick().recorded
        elapsed = time.perf_counter() - started
        with sessions() as session:
            recorded = session.scalar(
                select(func.count()).select_from(Trial).where(Trial.status == "done")
            )
        engine.dispose()
        print(
            json.dumps(
                {
                    "bench": "dispatch",
                    "trials": args.trials,
                    "recorded": recorded,
                    "batch": args.batch,
                    "worker_processes": args.workers,
                    "seconds": round(elapsed, 2),
                    "trials_per_s": round(done / elapsed, 1),
                    "noop_round_trips_per_s": round(noop, 1),
                    "ratio_to_noop": round(done / elapsed / noop, 2),
                    "goal_trials_per_s": 500,
                }
            )
        )
    finally:
        worker.stop()
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


if __name__ == "__main__":
    if os.environ.get("PROFILE"):  # PROFILE=1: where the scheduler's time goes
        cProfile.run("main()", "/tmp/dispatch.prof")
    else:
        main()
