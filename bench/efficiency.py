"""Guest efficiency: in-guest trial time / guest wall time, on real TCG guests.

Two ways to run the same trials: a fresh guest per trial, and one persistent
guest running them all through its agent. Wall time counts from the boot
request to the guest's destruction. Prints JSON.

    .venv/bin/python bench/efficiency.py [--trials 30] [--fresh 3] [--pages 4096]

Needs libvirtd (qemu:///system) and the installed Debian kernel.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from farm.artifacts.guest_image import build_initramfs
from farm.artifacts.kernels import installed_kernel
from farm.params import SeedToken
from farm.settings import load_settings
from workers.connection import open_connection
from workers.pool import GuestPool
from workers.vm import Guest


def run(guest: Guest, n: int, pages: int, first: int) -> list[float]:
    """Trials on a booted guest; the program's own elapsed seconds for each."""
    elapsed = []
    for i in range(first, first + n):
        token = SeedToken(seed=0xE5F1C1E0 + i).with_overrides({"pages": pages})
        outcome = guest.run(f"bench-{i}", token.params().argv(), 300)
        if outcome.answer is None or outcome.answer.get("status") != "exited":
            raise RuntimeError(f"trial {i} did not finish: {outcome.answer}")
        elapsed.append(outcome.answer["elapsed_ms"] / 1000)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=30, help="trials on the persistent guest")
    parser.add_argument("--fresh", type=int, default=3, help="trials with a boot each")
    parser.add_argument("--pages", type=int, default=4096)
    args = parser.parse_args()
    settings = load_settings()
    conn = open_connection(settings.libvirt_uri)
    kernel = installed_kernel()
    pool = GuestPool.from_settings(conn, settings, build_initramfs(settings.cache_dir))
    config = pool.config(kernel.name, kernel.path)

    fresh_in_guest, fresh_wall, boots = 0.0, 0.0, []
    for i in range(args.fresh):
        guest = Guest(conn, config)
        started = time.monotonic()
        try:
            guest.boot()
            boots.append(guest.boot_seconds)
            fresh_in_guest += sum(run(guest, 1, args.pages, i))
        finally:
            guest.destroy()
        fresh_wall += time.monotonic() - started

    guest = Guest(conn, config)
    started = time.monotonic()
    try:
        guest.boot()
        boots.append(guest.boot_seconds)
        kept = run(guest, args.trials, args.pages, 1000)
    finally:
        guest.destroy()
    kept_wall = time.monotonic() - started
    conn.close()
    per_trial_overhead = (kept_wall - guest.boot_seconds - sum(kept)) / args.trials
    print(
        json.dumps(
            {
                "bench": "efficiency",
                "virt_type": config.virt_type,
                "pages": args.pages,
                "boot_per_trial": {
                    "trials": args.fresh,
                    "efficiency": round(fresh_in_guest / fresh_wall, 3),
                    "wall_s_per_trial": round(fresh_wall / args.fresh, 2),
                },
                "persistent": {
                    "trials": args.trials,
                    "efficiency": round(sum(kept) / kept_wall, 3),
                    "wall_s": round(kept_wall, 1),
                    "median_trial_s": round(statistics.median(kept), 2),
                    "host_overhead_s_per_trial": round(per_trial_overhead, 3),
                },
                "median_boot_s": round(statistics.median(boots), 1),
                "goal_persistent": 0.85,
            }
        )
    )


if __name__ == "__main__":
    main()
