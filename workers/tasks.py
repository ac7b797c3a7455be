"""The ``run_trial`` task and the per-process guest pool behind it."""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import time
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_init, worker_process_shutdown

from farm.artifacts.guest_image import build_initramfs
from farm.params import MAX_TOKEN_CHARS
from farm.protocol import BATCH_TASK, PING_TASK, TRIAL_TASK, TrialResult
from farm.settings import Settings, load_settings
from farm.timing import BudgetError, check_worker_budget
from workers.celery_app import app
from workers.connection import open_connection
from workers.disk import tidy
from workers.pool import GuestPool
from workers.synthetic import synthetic_result
from workers.trial import execute
from workers.vm import reap_orphans

log = logging.getLogger(__name__)

MAX_BATCH = 256
SOFT_LIMIT_ERROR = (
    "the worker's soft time limit hit while this trial ran (its guest was destroyed): the "
    "worker failed to bound its own wait, so this is infrastructure, not the kernel"
)

_pool: GuestPool | None = None
_pool_pid: int | None = None


@functools.cache
def _settings() -> Settings:
    return load_settings()


def guest_pool() -> GuestPool:
    """This process's pool, created after the fork (a libvirt connection must not cross one).

    Created on the first task rather than in ``worker_process_init``: building the
    image or probing KVM can outlast Celery's child start-up timeout.
    """
    global _pool, _pool_pid
    if _pool is not None and _pool_pid == os.getpid():
        return _pool
    settings = _settings()
    conn = open_connection(settings.libvirt_uri)
    reaped = reap_orphans(conn)
    if reaped:
        log.warning("reaped orphan guests: %s", ", ".join(reaped))
    tidy(settings.cache_dir)  # a replaced process (killed child) may have left its console
    initrd = build_initramfs(settings.cache_dir)
    pool = GuestPool.from_settings(conn, settings, initrd)
    _pool, _pool_pid = pool, os.getpid()
    if pool.idle_s > 0:
        every_s = max(1.0, min(60.0, pool.idle_s / 4))
        threading.Thread(
            target=retire_idle_guests, args=(pool, every_s), name="idle-guests", daemon=True
        ).start()
    return pool


def retire_idle_guests(
    pool: GuestPool, every_s: float, stop: threading.Event | None = None
) -> None:
    """Every ``every_s``, shut down the pool's idle guests (a thread of the worker process).

    Celery runs nothing in a worker process between tasks: without this thread
    the guests of a finished campaign would run until the worker stops.
    """
    stop = stop or threading.Event()
    while not stop.wait(every_s):
        try:
            for name in pool.retire_idle():
                log.info("shut down the guest of kernel %s: unused for %.0f s", name, pool.idle_s)
        except Exception:  # a libvirt hiccup must not end the thread: the next round retries
            log.exception("retiring idle guests failed")


@worker_init.connect
def _at_start(**_: Any) -> None:
    """At worker start: refuse time limits Redis would cut short; cap old logs (workers/disk.py)."""
    settings = _settings()
    try:
        if settings.executor != "synthetic":  # no guests, no boot: nothing to budget
            check_worker_budget(
                boot_s=settings.boot_deadline_s,
                floor_s=settings.trial_deadline_s,
                visibility_s=settings.visibility_timeout_s,
                task_hard_limit_s=app.conf.task_time_limit or 0,
            )
    except BudgetError as exc:
        log.critical("%s", exc)
        raise SystemExit(2) from exc  # not an Exception: Celery's signal dispatch lets it out
    tidy(settings.cache_dir)


@worker_process_shutdown.connect
def _close(**_: Any) -> None:
    if _pool is not None and _pool_pid == os.getpid():
        _pool.close()


def _failed(
    message: dict[str, Any], worker: str, started: float, outcome: str, error: str
) -> dict[str, Any]:
    return TrialResult(
        trial_id=str(message.get("trial_id", "(none)"))[:128],
        token=str(message.get("token", ""))[:MAX_TOKEN_CHARS],
        kernel=str((message.get("kernel") or {}).get("name", ""))[:256],
        worker=worker,
        outcome=outcome,  # type: ignore[arg-type]
        error=error[:2000],
        started_at=started,
        finished_at=time.time(),
    ).to_json()


def _run_one(message: dict[str, Any], worker: str) -> dict[str, Any]:
    """One trial; always a validated TrialResult as JSON (SoftTimeLimitExceeded propagates)."""
    started = time.time()
    log.info("running trial %s", str(message.get("trial_id", ""))[:128])
    try:
        if _settings().executor == "synthetic":
            return synthetic_result(message, worker).to_json()
        pool = guest_pool()
        with pool.lock:  # no idle-guest retiring while a trial runs
            return execute(pool, message, worker, _settings().cache_dir).to_json()
    except SoftTimeLimitExceeded:
        kernel = str((message.get("kernel") or {}).get("name", ""))
        if _pool is not None:
            with _pool.lock:
                _pool.retire(kernel)
        raise
    except Exception as exc:  # infrastructure trouble must still produce a record
        log.exception("trial %s failed on the worker", message.get("trial_id"))
        return _failed(message, worker, started, "infra-error", f"{type(exc).__name__}: {exc}")


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@app.task(name=TRIAL_TASK)
def run_trial(message: dict[str, Any]) -> dict[str, Any]:
    """Run one trial."""
    started = time.time()
    try:
        return _run_one(message, _worker_name())
    except SoftTimeLimitExceeded:
        return _failed(message, _worker_name(), started, "infra-error", SOFT_LIMIT_ERROR)


@app.task(name=BATCH_TASK)
def run_batch(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run trials one after another on this process's guests; one result per trial run.

    Batches amortise the broker round trip (~420 messages/s on 2 cores with
    acks_late): results travel and are recorded together. When the batch hits
    its soft time limit, the trial running then is an ``infra-error`` and the
    trials after it get no result: the scheduler puts them back in the queue.
    """
    results: list[dict[str, Any]] = []
    worker = _worker_name()
    for message in messages[:MAX_BATCH]:
        started = time.time()
        try:
            results.append(_run_one(message, worker))
        except SoftTimeLimitExceeded:
            results.append(_failed(message, worker, started, "infra-error", SOFT_LIMIT_ERROR))
            break
    return results


@app.task(name=PING_TASK)
def ping() -> str:
    """A no-op round trip: health checks, and the baseline of bench/dispatch.py."""
    return _worker_name()
