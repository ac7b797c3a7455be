"""Send queued trials to workers through Celery and record what comes back.

The control plane's half of a trial: the queued row exists before the
message is sent; the worker's result is validated, judged and recorded
exactly once (``farm.recorder``), whatever Celery delivers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from celery import Celery
from celery.result import AsyncResult
from sqlalchemy.orm import Session, sessionmaker

from farm.recorder import record
from farm.result import ResultError, TrialResult, validate_result
from farm.triage.verdict import Verdict, judge
from workers.celery_app import TRIAL_TASK, trial_message


@dataclass(frozen=True)
class Dispatch:
    """One trial to send: its id, token and kernel."""

    trial_id: str
    token: str
    kernel_name: str
    kernel_path: str
    deadline_s: float


@dataclass(frozen=True)
class Recorded:
    result: TrialResult
    verdict: Verdict


INFRA_RETRIES = 2  # an infra-error is sent again this many times before it is recorded


def send(app: Celery, trial: Dispatch, queue: str, attempt: int = 0) -> AsyncResult:
    message = trial_message(
        trial.trial_id, trial.token, trial.kernel_name, trial.kernel_path, trial.deadline_s
    )
    task_id = trial.trial_id if attempt == 0 else f"{trial.trial_id}.retry{attempt}"
    return app.send_task(TRIAL_TASK, args=[message], queue=queue, task_id=task_id)


def rejected(trial: Dispatch, error: str) -> TrialResult:
    """The record of a trial whose worker answer was unusable: the trial is marked, not lost."""
    now = time.time()
    return TrialResult(
        trial_id=trial.trial_id,
        token=trial.token,
        kernel=trial.kernel_name,
        worker="(control plane)",
        outcome="infra-error",
        error=error[:2000],
        started_at=now,
        finished_at=now,
    )


def collect(
    app: Celery,
    session_factory: sessionmaker[Session],
    trials: Sequence[Dispatch],
    queue: str,
    *,
    on_result: Callable[[Recorded], None] = lambda _: None,
    timeout_s: float = 3600.0,
    alive: Callable[[], bool] = lambda: True,
    infra_retries: int = INFRA_RETRIES,
) -> list[Recorded]:
    """Send every trial, wait for all results, record each once; in completion order.

    Infrastructure errors (a boot that failed, libvirt trouble) say nothing
    about the kernel: they are sent again up to ``infra_retries`` times and
    only the last attempt is recorded.
    """
    pending: dict[str, tuple[Dispatch, AsyncResult]] = {
        t.trial_id: (t, send(app, t, queue)) for t in trials
    }
    attempts: dict[str, int] = {}
    done: list[Recorded] = []
    deadline = time.monotonic() + timeout_s
    while pending:
        if time.monotonic() > deadline or not alive():
            why = "no worker answered" if not alive() else f"no result within {timeout_s:.0f} s"
            for trial, handle in pending.values():
                handle.revoke()
                done.append(_record(session_factory, rejected(trial, why), on_result))
            break
        for trial_id, (trial, handle) in list(pending.items()):
            if not handle.ready():
                continue
            result = _result_of(trial, handle)
            handle.forget()
            if result.outcome == "infra-error" and attempts.get(trial_id, 0) < infra_retries:
                attempts[trial_id] = attempts.get(trial_id, 0) + 1
                pending[trial_id] = (trial, send(app, trial, queue, attempts[trial_id]))
                continue
            del pending[trial_id]
            done.append(_record(session_factory, result, on_result))
        time.sleep(0.2)
    return done


def _result_of(trial: Dispatch, handle: AsyncResult) -> TrialResult:
    try:
        data: Any = handle.get(timeout=5, propagate=True)
    except Exception as exc:  # the task itself failed: still a record
        return rejected(trial, f"worker task failed: {type(exc).__name__}: {exc}")
    try:
        result = validate_result(data)
    except ResultError as exc:
        return rejected(trial, f"worker result rejected: {exc}")
    if result.trial_id != trial.trial_id:
        return rejected(trial, f"worker answered for trial {result.trial_id!r}")
    return result


def _record(
    session_factory: sessionmaker[Session],
    result: TrialResult,
    on_result: Callable[[Recorded], None],
) -> Recorded:
    verdict = judge(result)
    record(session_factory, result, verdict=verdict)
    recorded = Recorded(result, verdict)
    on_result(recorded)
    return recorded
