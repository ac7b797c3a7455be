"""Recovery by boot against recovery by restore, on real TCG guests; prints JSON.

Why: on a kernel where trials hit (a WARN build marks the race window on every
kernel, fixed or not, and ``WARN_ON_ONCE`` fires once per boot), each hit
needs a fresh guest before the next trial can show anything. A reboot costs a
TCG boot; a restore from a memory image of a ready guest should cost about a
second. Both modes run the same tokens through the worker's own code
(``workers.trial.execute`` on a ``GuestPool``), one slot each, one after the
other in this run.

    .venv/bin/python bench/recovery.py [--kernel NAME] [--trials 12] [--pages 1024]
                                       [--recover report|every]

``--kernel`` names a kernel in the farm's cache (``farm kernels list``;
FARM_CACHE_DIR picks the cache), default the installed Debian kernel.
``--recover report`` replaces the guest after what the pool replaces it for
(a kernel report, a dead or hung guest); ``every`` after every trial, which
stands in for a kernel that hits on every trial (the default when no kernel is
named: a stock kernel never hits). A trial "needing recovery" counts as a hit.

Measured per mode: hits per guest-hour (hits over the slot's wall time, which
includes every recovery), the median time from a hit's report to the next
trial's start (retiring the old guest plus making the new one), and for
restore the split of a restore into libvirt's restore and the agent's resume.
The image is built before the restore mode is timed; its cost is reported apart.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from farm.artifacts.guest_image import build_initramfs
from farm.artifacts.kernels import KernelImage, cached_kernels, installed_kernel
from farm.params import SeedToken
from farm.settings import load_settings
from farm.triage.engine import parse as parse_console
from workers.connection import open_connection
from workers.pool import GuestPool
from workers.snapshot import SnapshotStore
from workers.trial import execute
from workers.vm import Guest


class TimedPool(GuestPool):
    """A pool that notes when a guest is retired and when a new one is handed out."""

    retired_at: float | None = None
    gaps: list[float]
    retires: list[float]
    lives: list[Guest]

    def retire(self, kernel_name: str) -> None:
        self.retired_at = time.monotonic()
        super().retire(kernel_name)
        self.retires.append(time.monotonic() - self.retired_at)

    def acquire(self, kernel_name: str, kernel: Path) -> tuple[Guest, bool]:
        guest, new = super().acquire(kernel_name, kernel)
        if new:
            self.lives.append(guest)
            if self.retired_at is not None:
                self.gaps.append(time.monotonic() - self.retired_at)
        self.retired_at = None
        return guest, new


def pick_kernel(name: str | None, cache_dir: Path) -> KernelImage:
    if name is None:
        return installed_kernel()
    for kernel in cached_kernels(cache_dir):
        if kernel.name == name:
            return kernel
    known = ", ".join(k.name for k in cached_kernels(cache_dir)) or "none"
    raise SystemExit(f"kernel {name!r} is not in {cache_dir}/kernels (known: {known})")


def run_mode(
    pool: TimedPool, kernel: KernelImage, tokens: list[str], every: bool, cache_dir: Path
) -> dict[str, Any]:
    pool.gaps, pool.lives, pool.retires = [], [], []
    hits = reports = 0
    outcomes: dict[str, int] = {}
    errors: list[str] = []
    started = time.monotonic()
    for i, token in enumerate(tokens):
        message = {
            "trial_id": f"recovery-{i}",
            "token": token,
            "kernel": {"name": kernel.name, "sha256": kernel.sha256},
            "deadline_s": 120,
        }
        result = execute(pool, message, worker="bench", cache_dir=cache_dir)
        outcomes[result.outcome] = outcomes.get(result.outcome, 0) + 1
        if result.outcome != "ok":
            errors.append(f"{result.outcome}: {(result.error or '')[:300]}")
        reported = bool(parse_console(result.console)) if result.console else False
        reports += reported
        needed = reported or result.outcome in ("guest-died", "timeout")
        if every and kernel.name in pool.guests:
            pool.retire(kernel.name)
            needed = True
        hits += needed
    wall = time.monotonic() - started
    pool.close()
    restores = [g for g in pool.lives if g.restored]
    out: dict[str, Any] = {
        "trials": len(tokens),
        "outcomes": outcomes,
        "errors": errors,
        "kernel_reports": reports,
        "hits": hits,
        "wall_s": round(wall, 1),
        "hits_per_guest_hour": round(hits / wall * 3600, 1),
        "median_report_to_next_trial_s": round(statistics.median(pool.gaps), 2)
        if pool.gaps
        else None,
        "report_to_next_trial_s": [round(g, 2) for g in pool.gaps],
        "new_lives": len(pool.lives),
        "median_retire_s": round(statistics.median(pool.retires), 2) if pool.retires else None,
        "median_new_life_s": round(statistics.median(g.boot_seconds for g in pool.lives), 2)
        if pool.lives
        else None,
    }
    if restores:
        out["median_restore_s"] = {
            step: round(statistics.median(g.restore_phases[step] for g in restores), 2)
            for step in ("restore", "resume")
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kernel", help="a kernel of the farm's cache; default: installed")
    parser.add_argument("--trials", type=int, default=12, help="trials per mode")
    parser.add_argument("--pages", type=int, default=1024)
    parser.add_argument("--recover", choices=("report", "every"), default=None)
    args = parser.parse_args()
    every = (args.recover or ("every" if args.kernel is None else "report")) == "every"
    settings = load_settings()
    kernel = pick_kernel(args.kernel, Path(settings.cache_dir))
    conn = open_connection(settings.libvirt_uri)
    common: dict[str, Any] = {
        "conn": conn,
        "initrd": build_initramfs(settings.cache_dir),
        "console_dir": Path(settings.cache_dir) / "consoles",
        "virt_type": settings.virt_type or "qemu",
        "boot_deadline_s": 300.0,
        "memory_mb": settings.guest_memory_mb,
        "cpus": settings.guest_cpus,
    }
    tokens = [
        str(SeedToken(seed=0x7EC0FE00 + i).with_overrides({"pages": args.pages}))
        for i in range(args.trials)
    ]
    bench_started = time.monotonic()

    store = SnapshotStore(Path(settings.cache_dir) / "snapshots")
    restoring = TimedPool(**common, snapshots=store)
    restoring.gaps, restoring.lives, restoring.retires = [], [], []
    built = time.monotonic()
    restoring.acquire(kernel.name, kernel.path)  # builds the image unless one is there
    first = restoring.lives[0]
    slot = restoring.slots.get(kernel.name)
    meta = slot.metadata() if slot else None
    build = {
        "restored": first.restored,
        "new_image": bool(meta and meta["created_at"] >= time.time() - (time.monotonic() - built)),
        "image_mb": round(meta["size"] / 2**20, 1) if meta else None,
        "first_life_s": round(first.boot_seconds, 1),
        "wall_s": round(time.monotonic() - built, 1),
    }
    restoring.retire(kernel.name)
    cache_dir = Path(settings.cache_dir)
    restore = run_mode(restoring, kernel, tokens, every, cache_dir)
    boot = run_mode(TimedPool(**common), kernel, tokens, every, cache_dir)
    conn.close()

    ratio = (
        restore["hits_per_guest_hour"] / boot["hits_per_guest_hour"]
        if boot["hits_per_guest_hour"]
        else None
    )
    print(
        json.dumps(
            {
                "bench": "recovery",
                "kernel": kernel.name,
                "virt_type": common["virt_type"],
                "pages": args.pages,
                "recover": "every" if every else "report",
                "image": build,
                "boot": boot,
                "restore": restore,
                "hits_per_hour_ratio": round(ratio, 2) if ratio else None,
                "goals": {"median_restore_report_to_next_s": 1.5, "hits_per_hour_ratio": 3.0},
                "bench_wall_s": round(time.monotonic() - bench_started, 1),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
