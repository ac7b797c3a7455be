"""Uniform vs Thompson search on a simulated farm with one planted rare region; prints JSON.

Why: the adaptive search only earns its complexity if it finds a rare, narrow
timing region sooner and hits it more often than plain random seeds. No VM runs
here: a trial "hits" with probability P_IN inside the planted region and P_OUT
outside, decided from the token's real parameters (farm.params). Not a timed test.

    .venv/bin/python bench/adaptive.py [--seeds N] [--hits N]

The planted region deliberately straddles no bin edge exactly: pages 800-2000
(inside the 724-2435 log-bin), kick_delay_us 17-20 (half of the 15-22 bin),
punch=fallocate. A uniform draw lands in it ~1.2 % of the time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from farm.control.search import Observation, ThompsonSampler, UniformSampler, cached_params
from farm.params import TrialParams

P_IN = 0.05
P_OUT = 0.0005
REGION = {"pages": (800, 2000), "kick_delay_us": (17, 20), "punch": "fallocate"}


def planted(p: TrialParams) -> bool:
    """Whether a trial falls in the planted region."""
    return (
        REGION["pages"][0] <= p.pages <= REGION["pages"][1]
        and REGION["kick_delay_us"][0] <= p.kick_delay_us <= REGION["kick_delay_us"][1]
        and p.punch == REGION["punch"]
    )


def run(
    sampler: UniformSampler | ThompsonSampler, seed: int, hits_wanted: int, cap: int
) -> dict[str, Any]:
    """Propose/observe until ``hits_wanted`` hits (or ``cap`` trials)."""
    rng = random.Random(seed)  # the sampler's
    farm = random.Random(seed + 1_000_003)  # the simulated kernel's luck
    hits = inside = 0
    first = nth = None
    trials = 0
    while trials < cap and hits < hits_wanted:
        token = sampler.propose(rng)
        trials += 1
        is_in = planted(cached_params(token))
        inside += is_in
        anomalous = farm.random() < (P_IN if is_in else P_OUT)
        sampler.observe(token, Observation(finding=anomalous))
        if anomalous:
            hits += 1
            first = first or trials
            if hits == hits_wanted:
                nth = trials
    return {"first": first, "nth": nth, "trials": trials, "hits": hits, "inside": inside}


def _job(name: str, seed: int, hits_wanted: int, cap: int, epsilon: float) -> dict[str, Any]:
    sampler = UniformSampler() if name == "uniform" else ThompsonSampler(epsilon=epsilon)
    return run(sampler, seed, hits_wanted, cap)


def _summary(values: list[int | None], cap: int) -> dict[str, float | int]:
    """Median/mean/p90, counting a run that never got there as ``cap`` (censored)."""
    xs = sorted(cap if v is None else v for v in values)
    p90 = xs[min(len(xs) - 1, round(0.9 * (len(xs) - 1)))]
    return {
        "median": statistics.median(xs),
        "mean": round(statistics.fmean(xs), 1),
        "p90": p90,
        "censored": sum(v is None for v in values),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=50, help="independent runs per sampler")
    ap.add_argument("--hits", type=int, default=10, help="run each until this many hits")
    ap.add_argument("--cap", type=int, default=100_000, help="give up a run after this many trials")
    ap.add_argument("--epsilon", type=float, default=0.1, help="Thompson exploration floor")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes")
    args = ap.parse_args()

    started = time.perf_counter()
    out: dict[str, Any] = {
        "scenario": {
            "region": {k: list(v) if isinstance(v, tuple) else v for k, v in REGION.items()},
            "p_in": P_IN,
            "p_out": P_OUT,
            "seeds": args.seeds,
            "hits_wanted": args.hits,
            "cap": args.cap,
            "epsilon": args.epsilon,
        }
    }
    names = ("uniform", "thompson")
    jobs = [(n, s, args.hits, args.cap, args.epsilon) for n in names for s in range(args.seeds)]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:  # results do not depend on it
        results = list(pool.map(_job, *zip(*jobs, strict=True)))
    for name in names:
        runs = [r for job, r in zip(jobs, results, strict=True) if job[0] == name]
        trials = sum(r["trials"] for r in runs)
        out[name] = {
            "trials_to_first_hit": _summary([r["first"] for r in runs], args.cap),
            f"trials_to_{args.hits}_hits": _summary([r["nth"] for r in runs], args.cap),
            "hits_per_1000_trials": round(1000 * sum(r["hits"] for r in runs) / trials, 2),
            "share_in_region": round(sum(r["inside"] for r in runs) / trials, 4),
            "trials": trials,
        }
    u, t = out["uniform"], out["thompson"]
    nth = f"trials_to_{args.hits}_hits"
    out["ratio_uniform_over_thompson"] = {
        "first_hit_median": round(
            u["trials_to_first_hit"]["median"] / t["trials_to_first_hit"]["median"], 2
        ),
        f"{args.hits}_hits_median": round(u[nth]["median"] / t[nth]["median"], 2),
        "hits_per_1000": round(t["hits_per_1000_trials"] / u["hits_per_1000_trials"], 2),
    }
    out["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
