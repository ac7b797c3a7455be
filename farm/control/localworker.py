"""A Celery worker started and stopped by a command (``farm demo``, the tests).

It runs as a separate process, exactly as on a worker host, and gets only
what a worker may know: broker, result backend, cache and libvirt settings,
never the database URL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from farm.settings import WORKER_KEYS, Settings
from farm.transport import worker_argv


class LocalWorker:
    def __init__(
        self,
        settings: Settings,
        queue: str,
        *,
        concurrency: int = 1,
        log_file: Path | None = None,
        prefix: Sequence[str] = (),
        extra: Sequence[str] = (),
    ) -> None:
        """``queue`` is one queue or several, comma-separated. ``prefix`` runs the worker
        through another command (that must exec it), e.g. ``ip netns exec <ns>`` to put
        it on another (simulated) host; ``extra`` are more worker options."""
        self.settings = settings
        self.queue = queue
        self.concurrency = concurrency
        self.prefix = list(prefix)
        self.extra = list(extra)
        self.name = f"local-{uuid.uuid4().hex[:8]}@{settings.worker_name}"
        self.log_file = log_file or settings.cache_dir / "logs" / f"worker-{queue}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
        for key in WORKER_KEYS:
            value = getattr(self.settings, key)
            if value is not None:
                env["FARM_" + key.upper()] = str(value)
        return env

    def start(self) -> LocalWorker:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_file.open("ab")
        self.proc = subprocess.Popen(
            [
                *self.prefix,
                *worker_argv(
                    sys.executable,
                    self.queue.split(","),
                    concurrency=self.concurrency,
                    extra=[
                        "--hostname",
                        self.name,
                        "--without-gossip",
                        "--without-mingle",
                        "--without-heartbeat",
                        *self.extra,
                    ],
                ),
            ],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 60.0) -> None:
        """Warm shutdown (guests destroyed by the worker), then SIGKILL if it lingers.

        A killed worker's libvirt connection closes, and AUTODESTROY takes its guests.
        """
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> LocalWorker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def wait_until(predicate: object, timeout: float, step: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return True
        time.sleep(step)
    return False
