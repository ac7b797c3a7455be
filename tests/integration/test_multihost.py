"""The farm spread over hosts: network namespaces stand in for machines on one LAN.

Four namespaces, each with its own hostname, on 10.77.0.0/24 (a bridge inside
the "db" namespace; nothing touches the host's own network):

- db     10.77.0.1  a private Redis (broker, result backend) and PostgreSQL cluster
- sched  10.77.0.2  ``farm scheduler`` (database credentials live here only)
- w1     10.77.0.3  a Celery worker (synthetic executor)
- w2     10.77.0.4  a Celery worker (synthetic) and a libvirt worker with a real guest

A campaign must spread over both worker hosts and every trial be recorded once;
the workers get broker and result backend URLs, never the database's.
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
    Lan,
    PostgresServer,
    RedisServer,
    netns_unavailable,
    postgres_unavailable,
    runs_per_trial,
    start_scheduler,
    stop_process,
    tally,
    wait_for,
)
from sqlalchemy import select

from farm.artifacts.kernels import installed_kernel
from farm.control import campaigns
from farm.control.localworker import LocalWorker
from farm.settings import load_settings
from farm.store.db import ensure_kernel, make_engine, session_factory, upgrade
from farm.store.models import Campaign, Trial
from workers.host import queues_for

pytestmark = [pytest.mark.multihost]

HOSTS = ("db", "sched", "w1", "w2")
TRIALS = 120
SYNTHETIC_KERNEL = "multihost-synthetic"


@pytest.fixture
def lan() -> Iterator[Lan]:
    reason = netns_unavailable() or postgres_unavailable()
    if reason:
        pytest.skip(reason)
    lan = Lan(HOSTS).create()
    try:
        yield lan
    finally:
        lan.delete()  # kills whatever still runs in the namespaces


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def test_a_campaign_spreads_over_two_worker_hosts(lan: Lan, tmp_path: Path) -> None:
    db_host, db_ip = lan.hosts["db"], lan.address("db")
    in_db = ["ip", "netns", "exec", db_host.name]
    redis = RedisServer(tmp_path / "redis", port=6379, bind=db_ip, prefix=in_db).start()
    pg = PostgresServer(port=5432, listen=db_ip, prefix=in_db).init().start()
    started: list[LocalWorker] = []
    scheduler = None
    try:
        pg.create_database("farm")
        local_url = pg.url("farm")  # this process reaches the db host over the unix socket
        upgrade(local_url)
        engine = make_engine(local_url)
        sessions = session_factory(engine)
        real = installed_kernel()
        with sessions.begin() as session:
            ensure_kernel(
                session, SYNTHETIC_KERNEL, "6.1.0-test", "/boot/vmlinuz-test", None, "custom"
            )
            ensure_kernel(session, real.name, real.release, str(real.path), real.sha256, "debian")
            name = f"mh-{uuid.uuid4().hex[:6]}"
            spec = campaigns.parse_spec(
                {
                    "name": name,
                    "kernels": [SYNTHETIC_KERNEL],
                    "budget": {"trials": TRIALS},
                    "concurrency": 8,
                }
            )
            campaigns.transition(campaigns.create(session, spec), "running")
            repro = f"mhr-{uuid.uuid4().hex[:6]}"
            campaigns.create_reproduction(
                session, "zf1-00000000000000cc~pages=256", [real.name], runs=1, name=repro
            )

        worker_settings = replace(
            load_settings(), broker_url=redis.url(0), result_backend=redis.url(1)
        )
        for host in ("w1", "w2"):
            started.append(
                LocalWorker(
                    replace(worker_settings, executor="synthetic", cache_dir=tmp_path / host),
                    ",".join(queues_for([SYNTHETIC_KERNEL], cpu_control=True)),
                    concurrency=1,
                    log_file=tmp_path / f"{host}.log",
                    prefix=lan.hosts[host].prefix(),
                ).start()
            )
        started.append(  # one real TCG guest on host w2 (default cache: the cached image)
            LocalWorker(
                replace(worker_settings, executor="libvirt"),
                ",".join(queues_for([real.name], cpu_control=True)),
                log_file=tmp_path / "w2-libvirt.log",
                prefix=lan.hosts["w2"].prefix(),
            ).start()
        )
        scheduler = start_scheduler(
            {
                "FARM_DATABASE_URL": pg.url("farm", tcp=True),
                "FARM_BROKER_URL": redis.url(0),
                "FARM_RESULT_BACKEND": redis.url(1),
            },
            tmp_path / "scheduler.log",
            prefix=lan.hosts["sched"].prefix(),
        )

        def finished() -> bool:
            with sessions() as session:
                rows = session.scalars(
                    select(Campaign.status).where(Campaign.name.in_([name, repro]))
                ).all()
            return rows == ["done", "done"]

        began = time.monotonic()
        ok = wait_for(finished, 150, 0.5)
        logs = "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(tmp_path.glob("*.log"))
        )
        assert ok, logs
        print(f"[multihost] both campaigns done in {time.monotonic() - began:.1f} s")

        for worker in started:
            assert worker.proc is not None
            env = environ(worker.proc.pid)
            assert "FARM_DATABASE_URL" not in env and env["FARM_BROKER_URL"] == redis.url(0)
        with sessions() as session:
            rows = session.execute(
                select(Trial.trial_id, Trial.worker, Trial.verdict, Trial.numa_nodes)
            ).all()
        by_host = Counter(r.worker.split(":")[0] for r in rows if r.trial_id.startswith(name))
        print(f"[multihost] trials per worker host: {dict(by_host)}")
        assert set(by_host) == {"w1-host", "w2-host"}, by_host  # both hosts ran trials
        assert min(by_host.values()) >= TRIALS // 10, by_host  # and really shared the work
        [guest_trial] = [r for r in rows if r.trial_id.startswith(repro)]
        assert guest_trial.worker.startswith("w2-host:") and guest_trial.verdict == "clean"
        assert guest_trial.numa_nodes == 2
        runs = runs_per_trial(tmp_path.glob("w*.log"))
        assert len(runs) == TRIALS + 1 and max(runs.values()) == 1, runs.most_common(3)
        result = tally("multihost", sessions, [name, repro], in_flight_at_fault=0)
        result.show()
        assert (result.recorded, result.duplicates, result.lost) == (TRIALS + 1, 0, 0)
        engine.dispose()
    finally:
        stop_process(scheduler)
        for worker in started:
            worker.stop(30)
        redis.stop(signal.SIGTERM)
        pg.close()
