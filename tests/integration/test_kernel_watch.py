"""A worker serving every local kernel takes up a kernel registered after it started.

Real worker process (as ``farm worker`` runs it: workers.celery_app with
``--kernel-scan-s``), real Redis. Before the watch step, such a worker never
consumed the new kernel's queue and a campaign on it stalled until a restart.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from farm.artifacts.kernels import KernelNotFound, add_custom, installed_kernel
from farm.control.localworker import LocalWorker
from farm.protocol import PING_TASK, kernel_queue
from farm.settings import load_settings

pytestmark = pytest.mark.redis


def _consumed(app: object, worker: LocalWorker) -> set[str]:
    replies = app.control.inspect(destination=[worker.name], timeout=1.0).active_queues()  # type: ignore[attr-defined]
    return {q["name"] for q in (replies or {}).get(worker.name, [])}


@pytest.mark.parametrize("scan", [True, False], ids=["kernel-scan", "no-scan"])
def test_worker_serves_a_kernel_registered_after_it_started(tmp_path: Path, scan: bool) -> None:
    from workers.celery_app import app

    try:
        image = installed_kernel()
    except KernelNotFound as exc:
        pytest.skip(f"needs a bzImage to register: {exc}")
    settings = replace(load_settings(), executor="synthetic", cache_dir=tmp_path / "cache")
    first = f"zapfarm.k.first-{uuid.uuid4().hex[:6]}"
    extra = ["--kernel-scan-s", "0.5"] if scan else []
    with LocalWorker(settings, first, log_file=tmp_path / "worker.log", extra=extra) as worker:
        deadline = time.monotonic() + 60
        while first not in _consumed(app, worker):
            assert worker.alive(), worker.log_tail()
            assert time.monotonic() < deadline, worker.log_tail()
        late = f"late-{uuid.uuid4().hex[:6]}"
        add_custom(settings.cache_dir, image.path, late)
        wanted = kernel_queue(late)
        deadline = time.monotonic() + 15
        while wanted not in _consumed(app, worker) and time.monotonic() < deadline:
            time.sleep(0.5)
        if not scan:  # the control: without the option, nothing changes
            assert wanted not in _consumed(app, worker)
            return
        assert wanted in _consumed(app, worker), worker.log_tail()
        # and it runs what is sent there
        assert isinstance(app.send_task(PING_TASK, queue=wanted).get(timeout=60), str)
        assert "new kernel in the cache: consuming " + wanted in worker.log_tail(200)
