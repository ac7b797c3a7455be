"""One trial on a worker: message in, validated and bounded TrialResult out.

This never raises for anything a guest or the hypervisor does: every failure
becomes an outcome (``infra-error``, ``guest-died``, ``timeout``, ``slow``, ...) with a
clear error, so the control plane always gets a record and nothing is lost.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from farm.artifacts.kernels import KernelError, KernelNotFound, resolve_kernel
from farm.params import MAX_TOKEN_CHARS, SeedToken, TokenError
from farm.protocol import (
    MAX_CONSOLE_BYTES,
    MAX_OUTPUT_BYTES,
    GuestInfo,
    MessageError,
    ResultError,
    TrialResult,
    Window,
    clip,
    parse_program_output,
    validate_message,
)
from farm.settings import load_settings
from farm.timing import ANSWER_GRACE_S, KILL_WAIT_S, NO_PROGRESS_S
from farm.triage.engine import parse as parse_console
from workers.host import can_limit_cpu
from workers.pool import GuestPool
from workers.vm import DomainState, Guest, GuestError, TrialRun

MAX_TRIAL_ID = 128
UNREAPED = "not reaped after SIGKILL"  # the agent's error for a program it could not reap


def execute(
    pool: GuestPool, message: Any, worker: str = "", cache_dir: Path | None = None
) -> TrialResult:
    """Run one trial message; ``cache_dir`` holds this host's kernels (default: settings)."""
    started = time.time()
    worker = worker or socket.gethostname()
    raw = message if isinstance(message, dict) else {}
    kernel_raw = raw.get("kernel") if isinstance(raw.get("kernel"), dict) else {}
    base: dict[str, Any] = {  # what the record can say even of a malformed message
        "trial_id": str(raw.get("trial_id", ""))[:MAX_TRIAL_ID] or "(none)",
        "token": str(raw.get("token", ""))[:MAX_TOKEN_CHARS],
        "kernel": str(kernel_raw.get("name", ""))[:256],
        "worker": worker[:256],
        "started_at": started,
    }

    def finish(outcome: str, error: str | None = None, **fields: Any) -> TrialResult:
        return TrialResult(
            outcome=outcome,  # type: ignore[arg-type]
            error=clip(error, 2000)[0] if error else None,
            finished_at=time.time(),
            **base,
            **fields,
        )

    try:
        msg = validate_message(message)  # the scheduler validated it too: same model
        token = SeedToken.parse(msg.token)
    except MessageError as exc:
        return finish("infra-error", f"refused: {exc}")
    except TokenError as exc:
        return finish("infra-error", f"refused: malformed trial message: token: {exc}")
    deadline_s, kernel_name = msg.deadline_s, msg.kernel.name
    try:
        where = cache_dir if cache_dir is not None else load_settings().cache_dir
        kernel_path = resolve_kernel(where, kernel_name, msg.kernel.sha256)
    except (KernelNotFound, KernelError) as exc:
        return finish("infra-error", f"refused: {exc}")

    try:
        guest, booted = pool.acquire(kernel_name, kernel_path)
    except GuestError as exc:
        base["prior_boot"] = getattr(pool, "prior_boot", None)
        return finish("infra-error", str(exc))
    base["prior_boot"] = getattr(pool, "prior_boot", None)  # recorded with this trial
    info = _guest_info(guest)
    if guest.numa_nodes < 2:
        pool.release(kernel_name, tainted=False)
        return finish(
            "invalid-guest",
            f"guest reports {guest.numa_nodes} NUMA node(s); the race needs 2 (ACPI/SRAT missing?)",
            guest=info,
            booted=booted,
        )

    params = token.params()
    if params.cpu_quota_pct < 100 and not can_limit_cpu():
        pool.release(kernel_name, tainted=False)
        return finish(
            "infra-error",
            "this host cannot throttle vCPUs (no cgroup cpu controller); the scheduler "
            "routes such trials to the .cpu queues of hosts that can",
            guest=info,
            booted=booted,
        )
    try:
        guest.apply_vm_knobs(params.cpu_quota_pct, params.vcpu_pin)
        run = guest.run(msg.trial_id, params.argv(), deadline_s)
    except GuestError as exc:
        pool.retire(kernel_name)
        return finish("infra-error", str(exc), guest=info, booted=booted)
    console, console_truncated = clip(run.console, MAX_CONSOLE_BYTES)
    info = _guest_info(guest)
    common: dict[str, Any] = {
        "guest": info,
        "booted": booted,
        "console": console,
        "console_truncated": console_truncated,
    }
    mm_released = run.answer.get("mm_released") if run.answer else None
    if not isinstance(mm_released, bool):
        mm_released = None
    common["mm_released"] = mm_released
    mm_wait = _int_or_none(run.answer.get("mm_wait_ms")) if run.answer else None
    common["mm_wait_ms"] = (
        max(0, mm_wait) if mm_wait is not None and mm_released is not None else None
    )
    reports = parse_console(run.console)
    stuck = run.answer is not None and _stuck(run)
    # a merely slow trial does not taint; a trial mm the agent stopped waiting for does
    # (its check_mm() could still print into the next trial)
    tainted = run.answer is None or stuck or mm_released is False or bool(reports)
    pool.release(kernel_name, tainted=tainted)

    if run.answer is None:
        outcome, error = no_answer(run, deadline_s, any(r.fatal for r in reports))
        return finish(outcome, error, **common)

    answer = run.answer
    status = answer.get("status")
    output, _ = clip(str(answer.get("output", "")), MAX_OUTPUT_BYTES)
    fields = {
        **common,
        "exit_code": _int_or_none(answer.get("exit_code")),
        "signal": _int_or_none(answer.get("signal")),
        "elapsed_ms": max(0, _int_or_none(answer.get("elapsed_ms")) or 0),
        "window": _window(answer.get("window")),
    }
    if _stuck(run):
        why = (
            "could not be reaped after SIGKILL (stuck in the kernel)"
            if answer.get("error") == UNREAPED
            else f"stopped making progress (its CPU time stood still for {NO_PROGRESS_S:.0f} s)"
        )
        return finish(
            "timeout",
            f"trial program {why}; killed at its {deadline_s:.0f} s deadline",
            output=output,
            **fields,
        )
    if status == "timeout":
        return finish(
            "slow",
            f"trial program still making progress at its {deadline_s:.0f} s deadline "
            "(killed): slow, not hung; its oracles were never read",
            output=output,
            **fields,
        )
    if status != "exited":
        why = str(answer.get("error") or f"status {status!r}")
        return finish(
            "program-error", f"trial program did not exit normally: {why}", output=output, **fields
        )
    try:
        program = parse_program_output(str(answer.get("output", "")))
    except ResultError as exc:
        return finish("program-error", str(exc), output=output, **fields)
    return finish("ok", program.error, program=program, **fields)


def _stuck(run: TrialRun) -> bool:
    """The agent killed the program at its deadline and it had stopped making progress."""
    answer = run.answer or {}
    return answer.get("status") == "timeout" and (
        run.program_stalled or answer.get("error") == UNREAPED
    )


def no_answer(run: TrialRun, deadline_s: float, panicked: bool) -> tuple[str, str]:
    """The outcome of a trial the agent never answered, and why: ask before blaming the kernel.

    A kernel that panicked, or a domain libvirt saw crash, is the guest's doing
    (``guest-died``); a guest that runs but went silent, no heartbeat and no
    console for the no-progress window, is hung (``timeout``). A domain that is
    gone without a panic on its console, a libvirtd that does not answer, a
    channel that broke under a running domain: infrastructure (``infra-error``),
    which the control plane retries.
    """
    if panicked:
        return "guest-died", f"the guest kernel panicked (domain {run.state})"
    if run.state == DomainState.CRASHED:
        return "guest-died", "libvirt reports the guest crashed"
    if run.state == DomainState.RUNNING and run.stalled:
        return "timeout", (
            f"the guest stopped making progress: no heartbeat from its agent for "
            f"{NO_PROGRESS_S:.0f} s ({run.heartbeats} heartbeats before)"
        )
    why = run.broken or (
        "no answer by the trial's deadline plus grace "
        f"({deadline_s:.0f} s + {KILL_WAIT_S + ANSWER_GRACE_S:.0f} s) though the guest kept beating"
    )
    return (
        "infra-error",
        f"{why}; libvirt says the domain is {run.state}, the console shows no panic",
    )


def _guest_info(guest: Guest) -> GuestInfo:
    return GuestInfo(
        name=guest.name,
        boot_id=guest.boot_id,
        kernel_release=guest.kernel_release,
        numa_nodes=max(0, min(1024, guest.numa_nodes)),
        virt_type="kvm" if guest.config.virt_type == "kvm" else "qemu",
        boot_seconds=round(guest.boot_seconds, 3),
        trials_on_boot=guest.trials,
    )


def _window(value: object) -> Window | None:
    """The agent's window counters; None when absent (uninstrumented kernel) or invalid."""
    if not isinstance(value, dict):
        return None
    try:
        return Window.model_validate(value)
    except ValidationError:
        return None


def _int_or_none(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return max(-(1 << 31), min(1 << 31, value))
