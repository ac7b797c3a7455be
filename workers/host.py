"""What this worker host can do: which timing knobs it can apply, which queues it serves."""

from __future__ import annotations

import contextlib
from pathlib import Path

from farm.protocol import kernel_queue


def can_limit_cpu(cgroup_root: Path = Path("/sys/fs/cgroup")) -> bool:
    """libvirt's <cputune> quota needs the cgroup cpu controller (v1 or v2)."""
    if (cgroup_root / "cpu" / "cpu.cfs_quota_us").exists():
        return True
    controllers = cgroup_root / "cgroup.controllers"
    return controllers.exists() and "cpu" in controllers.read_text().split()


def worker_queues(kernels: list[str]) -> str:
    """The ``--queues`` argument of a worker on this host serving ``kernels``."""
    return ",".join(queues_for(kernels, cpu_control=can_limit_cpu()))


def queues_for(kernels: list[str], *, cpu_control: bool) -> list[str]:
    """A queue per kernel, and its ``.cpu`` twin (trials that throttle vCPUs) where we can."""
    queues = []
    for name in kernels:
        queues.append(kernel_queue(name))
        if cpu_control:
            queues.append(kernel_queue(name) + ".cpu")
    return queues


def local_kernel_names(cache_dir: Path) -> list[str]:
    """The installed Debian kernel and every kernel fetched, added or built into the cache."""
    from farm.artifacts.kernels import KernelNotFound, cached_kernels, installed_kernel

    names = []
    with contextlib.suppress(KernelNotFound):
        names.append(installed_kernel().name)
    names += [k.name for k in cached_kernels(cache_dir)]
    return list(dict.fromkeys(names))
