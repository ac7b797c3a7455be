"""One libvirt connection per process, with the event loop console streams need.

A libvirt connection must not cross a fork, so Celery worker processes call
``open_connection`` after forking (``worker_process_init``), never the parent.
"""

from __future__ import annotations

import contextlib
import os
import threading

import libvirt

_loop_lock = threading.Lock()
_loop_pid: int | None = None


class HypervisorError(RuntimeError):
    """libvirt is unreachable or refused; the message names the fix."""


def _run_event_loop() -> None:
    while True:
        libvirt.virEventRunDefaultImpl()


def start_event_loop() -> None:
    """Register and run libvirt's default event loop in a daemon thread, once per process."""
    global _loop_pid
    with _loop_lock:
        if _loop_pid == os.getpid():
            return
        libvirt.virEventRegisterDefaultImpl()
        threading.Thread(target=_run_event_loop, name="libvirt-events", daemon=True).start()
        _loop_pid = os.getpid()


def _quiet(_ctx: object, _err: object) -> None:
    """libvirt prints every error to stderr by default; we raise them instead."""


def open_connection(uri: str) -> libvirt.virConnect:
    start_event_loop()
    libvirt.registerErrorHandler(_quiet, None)
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as exc:
        hint = ""
        if uri.startswith("qemu:///"):
            hint = ": start it with `virtlogd -d && libvirtd -d` (or `systemctl start libvirtd`)"
        raise HypervisorError(f"libvirtd is not answering at {uri}{hint} ({exc})") from exc
    # Notice a dead libvirtd within ~20 s (the test:///default driver has no keepalive).
    with contextlib.suppress(libvirt.libvirtError):
        conn.setKeepAlive(5, 3)
    return conn
