"""Each scenario and mover on a real TCG guest: verdicts, the data oracle, the proxy.

One guest pool (the worker's own, replaced after a kernel report as in
production) runs TRIALS trials of every scenario through the worker's trial
path (``workers.trial.execute``), each with the next mover in turn; the
control plane's ``judge`` gives the verdict. No Celery, no database. Prints
JSON: per scenario the verdicts, titles, page reads and mismatches, the
window proxy, swap and wall time, plus every token run.

    .venv/bin/python bench/scenarios.py [--trials 3] [--pages 512] [--rounds 2] [--kernel PATH]

Needs libvirtd (qemu:///system); default kernel: the installed Debian one.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from farm.artifacts.guest_image import build_initramfs
from farm.artifacts.kernels import installed_kernel
from farm.params import MOVERS, SCENARIOS, SeedToken
from farm.settings import load_settings
from farm.triage.verdict import judge
from workers.connection import open_connection
from workers.pool import GuestPool
from workers.trial import execute


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=3, help="trials per scenario")
    parser.add_argument("--pages", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--kernel", type=Path, help="a bzImage (default: the installed kernel)")
    parser.add_argument("--scenario", action="append", choices=SCENARIOS, help="repeatable")
    args = parser.parse_args()
    settings = load_settings()
    conn = open_connection(settings.libvirt_uri)
    installed = installed_kernel()
    kernel_path = args.kernel or installed.path
    kernel_name = kernel_path.name if args.kernel else installed.name
    pool = GuestPool.from_settings(conn, settings, build_initramfs(settings.cache_dir))
    rows: dict[str, Any] = {}
    started_all = time.monotonic()
    try:
        for scenario in args.scenario or SCENARIOS:
            verdicts: Counter[str] = Counter()
            titles: Counter[str] = Counter()
            row: dict[str, Any] = {
                "checked": 0,
                "mismatches": 0,
                "proxy": {"overlapped": 0, "moved": 0, "gone": 0},
                "moved": 0,
                "tokens": [],
                "details": [],
            }
            started = time.monotonic()
            for i in range(args.trials):
                mover = MOVERS[i % len(MOVERS)]
                token = SeedToken(seed=0x5CE7A210 + i).with_overrides(
                    {
                        "scenario": scenario,
                        "mover": mover,
                        "pages": args.pages,
                        "rounds": args.rounds,
                        "cpu_quota_pct": 100,
                        "vcpu_pin": "none",
                    }
                )
                message = {
                    "trial_id": f"scen-{scenario}-{i}",
                    "token": str(token),
                    "kernel": {"name": kernel_name, "path": str(kernel_path)},
                    "deadline_s": 300,
                }
                result = execute(pool, message, "bench")
                verdict = judge(result)
                verdicts[verdict.kind.value] += 1
                if verdict.title:
                    titles[verdict.title] += 1
                row["tokens"].append(f"{token} -> {verdict.kind.value}")
                if verdict.detail and verdict.kind.value != "clean":
                    row["details"].append(verdict.detail[:300])
                program = result.program
                if program is not None:
                    if program.data is not None:
                        row["checked"] += program.data.checked
                        row["mismatches"] += program.data.mismatches
                    if program.proxy is not None:
                        for key in row["proxy"]:
                            row["proxy"][key] += getattr(program.proxy, key)
                    row["moved"] += program.migrate.moved
                    if program.swap is not None:
                        row["swap"] = program.swap.model_dump()
                    row.setdefault("numa_nodes", program.numa_nodes)
            row["verdicts"] = dict(verdicts)
            row["titles"] = dict(titles)
            row["wall_s"] = round(time.monotonic() - started, 1)
            rows[scenario] = row
    finally:
        pool.close()
        conn.close()
    print(
        json.dumps(
            {
                "bench": "scenarios",
                "kernel": kernel_name,
                "trials_per_scenario": args.trials,
                "pages": args.pages,
                "rounds": args.rounds,
                "wall_s": round(time.monotonic() - started_all, 1),
                "scenarios": rows,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
