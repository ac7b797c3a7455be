"""Guest efficiency: in-guest trial time / guest wall time, on real TCG guests; prints JSON.

Three ways to run the same kind of trials: a fresh boot per trial, one
persistent guest that was booted, and one persistent guest restored from a
memory image (how a worker with an image starts every life after the first,
workers/snapshot.py). Wall time counts from the boot or restore request to
the guest's destruction. Where the rest of the time goes is measured per
trial: the agent's own elapsed time against the host's time from request to
answer (channel round trip + agent work around the child), the wait for the
end marker in the console file, and cutting the excerpt; plus the median
ping round trip on the control channel.

    .venv/bin/python bench/efficiency.py [--trials 30] [--fresh 2] [--pages N]

Without ``--pages`` the trials are the default mix: seed tokens with no
overrides (``farm.params``). Needs libvirtd (qemu:///system) and the installed
Debian kernel.
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
from farm.artifacts.kernels import installed_kernel
from farm.params import SeedToken
from farm.settings import load_settings
from workers.connection import open_connection
from workers.pool import GuestPool
from workers.snapshot import SnapshotStore
from workers.vm import Guest


def token(i: int, pages: int | None) -> SeedToken:
    t = SeedToken(seed=0xE5F1C1E0 + i)
    return t.with_overrides({"pages": pages}) if pages else t


def run(guest: Guest, n: int, pages: int | None, first: int) -> list[dict[str, float]]:
    """Trials on a live guest; per trial the program's elapsed and the host's times (s)."""
    rows = []
    for i in range(first, first + n):
        params = token(i, pages).params()
        started = time.monotonic()
        guest.apply_vm_knobs(params.cpu_quota_pct, params.vcpu_pin)
        knobs = time.monotonic() - started
        outcome = guest.run(f"bench-{i}", params.argv(), 300)
        wall = time.monotonic() - started
        if outcome.answer is None or outcome.answer.get("status") != "exited":
            raise RuntimeError(f"trial {i} did not finish: {outcome.answer}")
        elapsed = outcome.answer["elapsed_ms"] / 1000
        rows.append({"elapsed": elapsed, "wall": wall, "knobs": knobs, **outcome.host_s})
    return rows


def pings(guest: Guest, n: int = 20) -> float:
    """Median control-channel round trip (ping/pong), seconds."""
    assert guest.channel is not None
    times = []
    for i in range(n):
        started = time.monotonic()
        guest.channel.send({"op": "ping", "id": f"rtt-{i}"})
        while (answer := guest.channel.receive(30)) is not None and answer.get("id") != f"rtt-{i}":
            pass
        times.append(time.monotonic() - started)
    return statistics.median(times)


def persistent(
    guest: Guest, wall: float, start_s: float, rows: list[dict[str, float]], rtt: float
) -> dict[str, Any]:
    in_guest = sum(r["elapsed"] for r in rows)
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    total = {k: sum(r[k] for r in rows) for k in rows[0]}
    return {
        "trials": len(rows),
        "efficiency": round(in_guest / wall, 3),
        "wall_s": round(wall, 1),
        "start_s": round(start_s, 2),
        "median_trial_s": round(med["elapsed"], 2),
        "host_overhead_s_per_trial": round((wall - start_s - in_guest) / len(rows), 3),
        "median_per_trial_s": {
            "agent_and_channel": round(med["answer"] - med["elapsed"], 3),
            "end_marker_wait": round(med["marker"], 3),
            "excerpt_cut": round(med["excerpt"], 4),
            "vm_knobs": round(med["knobs"], 4),
        },
        "overhead_s_total": {  # where the wall time outside the trial programs went
            "start": round(start_s, 2),
            "agent_and_channel": round(total["answer"] - total["elapsed"], 2),
            "end_marker_wait": round(total["marker"], 2),
            "excerpt_cut": round(total["excerpt"], 3),
            "vm_knobs": round(total["knobs"], 2),
            "rest": round(wall - start_s - total["wall"], 2),  # the ping round trips and the loop
        },
        "median_ping_rtt_s": round(rtt, 4),
        "efficiency_without_start": round(in_guest / (wall - start_s), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=30, help="trials on each persistent guest")
    parser.add_argument("--fresh", type=int, default=2, help="trials with a boot each")
    parser.add_argument("--pages", type=int, default=None, help="override pages (default: mix)")
    args = parser.parse_args()
    bench_started = time.monotonic()
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
            fresh_in_guest += sum(r["elapsed"] for r in run(guest, 1, args.pages, i))
        finally:
            guest.destroy()
        fresh_wall += time.monotonic() - started

    guest = Guest(conn, config)
    started = time.monotonic()
    try:
        guest.boot()
        boots.append(guest.boot_seconds)
        rows = run(guest, args.trials, args.pages, 1000)
        rtt = pings(guest)
        rtt_wall = time.monotonic()
    finally:
        guest.destroy()
    booted = persistent(guest, rtt_wall - started, guest.boot_seconds, rows, rtt)

    # the image is made (or found) first; then a restored life is timed like the booted one
    if pool.snapshots is None:
        pool.snapshots = SnapshotStore(Path(settings.cache_dir) / "snapshots")
    try:
        pool.acquire(kernel.name, kernel.path)
        pool.retire(kernel.name)
        started = time.monotonic()
        guest, _ = pool.acquire(kernel.name, kernel.path)
        rows = run(guest, args.trials, args.pages, 1000)
        rtt = pings(guest)
        rtt_wall = time.monotonic()
    finally:
        pool.close()
    restored = persistent(guest, rtt_wall - started, guest.boot_seconds, rows, rtt)
    restored["restore_phases_s"] = {k: round(v, 3) for k, v in guest.restore_phases.items()}
    conn.close()
    print(
        json.dumps(
            {
                "bench": "efficiency",
                "virt_type": config.virt_type,
                "pages": args.pages or "default mix",
                "boot_per_trial": {
                    "trials": args.fresh,
                    "efficiency": round(fresh_in_guest / fresh_wall, 3) if fresh_wall else None,
                    "wall_s_per_trial": round(fresh_wall / args.fresh, 2) if args.fresh else None,
                },
                "persistent": booted,
                "persistent_restored": restored,
                "median_boot_s": round(statistics.median(boots), 1),
                "goal_persistent": 0.85,
                "bench_wall_s": round(time.monotonic() - bench_started, 1),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
