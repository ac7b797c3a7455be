"""``/metrics``: the farm's state in the Prometheus text format, read at scrape time.

Everything comes from the results database (the one place all workers'
results meet) and, for queue depth, from the broker: a scrape is a handful of
grouped queries, no counters live in this process, so any number of `farm
web` processes give the same numbers and a restart loses nothing.

    zapfarm_trials_total{kernel,verdict}          trials recorded, by verdict
    zapfarm_trials_in_flight{kernel,status}       queued (not yet running) and running trials
    zapfarm_broker_queue_messages{kernel,queue}   messages (trial batches) waiting in the broker
    zapfarm_workers_alive / zapfarm_workers_known  workers heard from within ALIVE_AFTER
    zapfarm_guest_boots_total{kernel}             guest boots the recorded trials paid for
    zapfarm_guest_boot_seconds                    histogram of their boot times
    zapfarm_recorder_lag_seconds{stat}            finished on the worker -> recorded (recent trials)
    zapfarm_scrape_errors_total{part}             a part that could not be read (broker down, ...)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from datetime import timedelta
from typing import Any

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from farm.protocol import kernel_queue
from farm.store.models import Kernel, Trial, Worker, utcnow

log = logging.getLogger(__name__)

ALIVE_AFTER = timedelta(minutes=5)  # as the workers page counts them
BOOT_BUCKETS = (5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0)
LAG_WINDOW = 200  # the recorder's lag over the most recently recorded trials
# kombu's Redis transport keeps priority levels in extra lists beside the queue's own
PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")


class FarmCollector(Collector):
    """Collects the farm's metrics from the database (and broker) on each scrape."""

    def __init__(self, sessions: sessionmaker[Session], broker_url: str | None = None) -> None:
        self.sessions = sessions
        self.broker_url = broker_url

    def collect(self) -> Iterator[Any]:
        errors = CounterMetricFamily(
            "zapfarm_scrape_errors", "Parts of a scrape that could not be read", labels=["part"]
        )
        with self.sessions() as session:
            kernels = {k: n for k, n in session.execute(select(Kernel.id, Kernel.name))}
            yield self._trials(session, kernels)
            yield self._in_flight(session, kernels)
            yield from self._workers(session)
            yield from self._boots(session, kernels)
            yield self._lag(session)
        if self.broker_url:
            try:
                yield self._queues(sorted(kernels.values()))
            except (redis.RedisError, OSError, ValueError) as exc:  # a broker outage: keep going
                log.warning("metrics: broker not readable: %s", exc)
                errors.add_metric(["broker"], 1)
        yield errors

    def _trials(self, session: Session, kernels: dict[int, str]) -> CounterMetricFamily:
        family = CounterMetricFamily(
            "zapfarm_trials", "Trials recorded, by kernel and verdict", labels=["kernel", "verdict"]
        )
        rows = session.execute(
            select(Trial.kernel_id, Trial.verdict, func.count())
            .where(Trial.status == "done")
            .group_by(Trial.kernel_id, Trial.verdict)
        )
        for kernel_id, verdict, count in rows:
            family.add_metric([kernels.get(kernel_id, "?"), verdict or "none"], count)
        return family

    def _in_flight(self, session: Session, kernels: dict[int, str]) -> GaugeMetricFamily:
        family = GaugeMetricFamily(
            "zapfarm_trials_in_flight",
            "Trials not done yet: queued (sent or about to be) and running on a worker",
            labels=["kernel", "status"],
        )
        counts = {
            (k, s): n
            for k, s, n in session.execute(
                select(Trial.kernel_id, Trial.status, func.count())
                .where(Trial.status != "done")
                .group_by(Trial.kernel_id, Trial.status)
            )
        }
        for kernel_id, name in sorted(kernels.items(), key=lambda kv: kv[1]):
            for status in ("queued", "running"):
                family.add_metric([name, status], counts.get((kernel_id, status), 0))
        return family

    def _workers(self, session: Session) -> Iterable[GaugeMetricFamily]:
        since = utcnow() - ALIVE_AFTER
        known = session.scalar(select(func.count()).select_from(Worker)) or 0
        alive = session.scalar(select(func.count()).where(Worker.last_seen >= since)) or 0
        yield GaugeMetricFamily(
            "zapfarm_workers_alive",
            f"Workers heard from in the last {int(ALIVE_AFTER.total_seconds())} s",
            value=alive,
        )
        yield GaugeMetricFamily("zapfarm_workers_known", "Workers ever heard from", value=known)

    def _boots(self, session: Session, kernels: dict[int, str]) -> Iterable[Any]:
        boots = CounterMetricFamily(
            "zapfarm_guest_boots", "Guest boots paid for by recorded trials", labels=["kernel"]
        )
        seconds: list[float] = []
        per_kernel: dict[int, int] = {}
        rows = session.execute(
            select(Trial.kernel_id, Trial.result["guest"]["boot_seconds"].as_float()).where(
                Trial.booted.is_(True)
            )
        )
        for kernel_id, value in rows:
            per_kernel[kernel_id] = per_kernel.get(kernel_id, 0) + 1
            if value is not None:
                seconds.append(float(value))
        for kernel_id, n in sorted(per_kernel.items()):
            boots.add_metric([kernels.get(kernel_id, "?")], n)
        yield boots
        buckets = [(str(b), sum(1 for s in seconds if s <= b)) for b in BOOT_BUCKETS]
        buckets.append(("+Inf", len(seconds)))
        yield HistogramMetricFamily(
            "zapfarm_guest_boot_seconds",
            "Seconds from creating a guest to its agent's ready message",
            buckets=buckets,
            sum_value=sum(seconds),
        )

    def _lag(self, session: Session) -> GaugeMetricFamily:
        family = GaugeMetricFamily(
            "zapfarm_recorder_lag_seconds",
            f"Seconds from a trial's end on its worker to its row being recorded, over the "
            f"last {LAG_WINDOW} recorded trials",
            labels=["stat"],
        )
        recent = (
            select(Trial.finished_at, Trial.recorded_at)
            .where(Trial.recorded_at.is_not(None), Trial.finished_at.is_not(None))
            .order_by(Trial.recorded_at.desc())
            .limit(LAG_WINDOW)
        )
        lags = [max(0.0, (r - f).total_seconds()) for f, r in session.execute(recent)]
        if lags:
            lags.sort()
            family.add_metric(["max"], lags[-1])
            family.add_metric(["median"], lags[len(lags) // 2])
        return family

    def _queues(self, kernel_names: list[str]) -> GaugeMetricFamily:
        family = GaugeMetricFamily(
            "zapfarm_broker_queue_messages",
            "Messages (each a batch of trials) waiting in the broker, per kernel queue",
            labels=["kernel", "queue"],
        )
        client = redis.Redis.from_url(str(self.broker_url), socket_timeout=2)
        try:
            for name in kernel_names:
                for queue in (kernel_queue(name), kernel_queue(name) + ".cpu"):
                    pipe = client.pipeline()
                    for suffix in PRIORITY_SUFFIXES:
                        pipe.llen(queue + suffix)
                    family.add_metric([name, queue], sum(pipe.execute()))
        finally:
            client.close()
        return family


def registry_for(sessions: sessionmaker[Session], broker_url: str | None) -> CollectorRegistry:
    """A registry of its own per app (tests run several apps in one process)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FarmCollector(sessions, broker_url))
    return registry
