"""The ``run_trial`` task and the per-process guest pool behind it."""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_shutdown
from farm.guest_image import build_initramfs

from farm.result import TrialResult
from farm.settings import load_settings
from workers.celery_app import TRIAL_TASK, app
from workers.connection import open_connection
from workers.pool import GuestPool
from workers.trial import execute
from workers.vm import reap_orphans

log = logging.getLogger(__name__)

_pool: GuestPool | None = None
_pool_pid: int | None = None


def guest_pool() -> GuestPool:
    """This process's pool, created after the fork (a libvirt connection must not cross one).

    Created on the first task rather than in ``worker_process_init``: building the
    image or probing KVM can outlast Celery's child start-up timeout.
    """
    global _pool, _pool_pid
    if _pool is not None and _pool_pid == os.getpid():
        return _pool
    settings = load_settings()
    conn = open_connection(settings.libvirt_uri)
    reaped = reap_orphans(conn)
    if reaped:
        log.warning("reaped orphan guests: %s", ", ".join(reaped))
    initrd = build_initramfs(settings.cache_dir)
    pool = GuestPool(
        conn=conn,
        initrd=initrd,
        console_dir=settings.cache_dir / "consoles",
        virt_type=settings.virt_type,
        probe_cache=settings.cache_dir / "host-probe.json",
        memory_mb=settings.guest_memory_mb,
        cpus=settings.guest_cpus,
        boot_deadline_s=settings.boot_deadline_s,
    )
    _pool, _pool_pid = pool, os.getpid()
    return pool


@worker_process_shutdown.connect
def _close(**_: Any) -> None:
    if _pool is not None and _pool_pid == os.getpid():
        _pool.close()


@app.task(name=TRIAL_TASK, bind=True)
def run_trial(self: Any, message: dict[str, Any]) -> dict[str, Any]:
    """Run one trial; always returns a validated TrialResult as JSON."""
    worker = f"{socket.gethostname()}:{os.getpid()}"
    started = time.time()
    try:
        pool = guest_pool()
        return execute(pool, message, worker=worker).to_json()
    except SoftTimeLimitExceeded:
        kernel = str((message.get("kernel") or {}).get("name", ""))
        if _pool is not None:
            _pool.retire(kernel)
        outcome, error = "timeout", "the trial hit the worker's soft time limit; guest destroyed"
    except Exception as exc:  # infrastructure trouble must still produce a record
        log.exception("trial %s failed on the worker", message.get("trial_id"))
        outcome, error = "infra-error", f"{type(exc).__name__}: {exc}"
    return TrialResult(
        trial_id=str(message.get("trial_id", "(none)"))[:128],
        token=str(message.get("token", ""))[:256],
        kernel=str((message.get("kernel") or {}).get("name", ""))[:256],
        worker=worker,
        outcome=outcome,  # type: ignore[arg-type]
        error=error[:2000],
        started_at=started,
        finished_at=time.time(),
    ).to_json()
