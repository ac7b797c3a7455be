"""A synthetic executor: instant, valid, clean results without any guest.

It exists to measure the control plane alone (``bench/dispatch.py``): the
scheduler, Redis, Celery and the recorder carry real messages and real
results, only the guest is skipped. Enabled with ``executor = "synthetic"``.
"""

from __future__ import annotations

import time
from typing import Any

from farm.params import MAX_TOKEN_CHARS, SeedToken, TokenError
from farm.protocol import ProgramOutput, TrialResult


def synthetic_result(message: dict[str, Any], worker: str) -> TrialResult:
    now = time.time()
    token = str(message.get("token", ""))[:MAX_TOKEN_CHARS]
    base = {
        "trial_id": str(message.get("trial_id", "(none)"))[:128],
        "token": token,
        "kernel": str((message.get("kernel") or {}).get("name", ""))[:256],
        "worker": worker,
        "started_at": now,
        "finished_at": now,
    }
    try:
        params = SeedToken.parse(token).params()
    except TokenError as exc:
        return TrialResult(outcome="infra-error", error=f"malformed trial message: {exc}", **base)
    kb = params.pages * 4
    program = ProgramOutput(
        program="zapmigrate",
        format=1,
        inputs=params.to_dict(),
        kernel="synthetic",
        numa_nodes=2,
        page_size=4096,
        migrate={
            "calls": params.pages,
            "call_errors": 0,
            "moved": params.pages,
            "enoent": 0,
            "ebusy": 0,
            "other": 0,
            "other_errnos": {},
        },
        punch={"calls": params.pages, "errors": 0},
        vma={"found": True, "rss_kb": 0, "pss_shmem_kb": 0},
        rollup={"pss_shmem_kb": 0},
        rss_shmem_kb={"before": 0, "populated": kb, "punched": 0},
        timing_us={"total": 0},
        error=None,
    )
    return TrialResult(outcome="ok", program=program, exit_code=0, elapsed_ms=0, **base)
