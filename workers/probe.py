"""Which virtualization a host can really use: KVM if a guest boots under it, else TCG.

On nested hosts ``/dev/kvm`` exists and opens, yet guests hang in early boot,
so the only honest probe is a boot with a short deadline. The verdict is
cached per host, QEMU binary and kernel, and logged, because the probe itself
costs a boot.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from workers.vm import Guest, GuestError

log = logging.getLogger(__name__)

PROBE_DEADLINE_S = 20.0


def _host_key(emulator: str) -> str:
    st = os.stat(emulator)
    return f"{socket.gethostname()}|{os.uname().release}|{emulator}|{st.st_size}|{int(st.st_mtime)}"


def detect_virt_type(
    make_guest: Callable[[str, float], Guest], cache_file: Path, emulator: str
) -> str:
    """``"kvm"`` or ``"qemu"`` (TCG); ``make_guest(virt_type, deadline)`` builds a probe guest."""
    key = _host_key(emulator)
    try:
        cached = json.loads(cache_file.read_text())
        if cached.get("key") == key and cached.get("virt_type") in ("kvm", "qemu"):
            return str(cached["virt_type"])
    except (OSError, ValueError):
        pass
    verdict, why = "qemu", "no usable /dev/kvm"
    if os.access("/dev/kvm", os.R_OK | os.W_OK):
        guest = make_guest("kvm", PROBE_DEADLINE_S)
        started = time.monotonic()
        try:
            guest.boot()
            verdict, why = (
                "kvm",
                f"probe guest booted under KVM in {time.monotonic() - started:.1f} s",
            )
        except GuestError as exc:
            why = f"no boot under KVM within {PROBE_DEADLINE_S:.0f} s ({str(exc)[:120]})"
        finally:
            guest.destroy()
    log.warning("virtualization: %s (%s)", "KVM" if verdict == "kvm" else "TCG", why)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    cache_file.write_text(
        json.dumps({"key": key, "virt_type": verdict, "why": why, "at": time.time()}) + "\n"
    )
    return verdict
