"""Reproduce a reported C program (not a token) in farm guests, and judge it.

Seeds arrive as C programs too (the seed thread's zap-migrate.c is one). The
program is built statically on this host, appended to the guest image as its
trial program (farm.artifacts.guest_image.with_program) and run under the
agent with a deadline, so its mm is torn down before the run is judged.

Only the oracles that apply to a program the farm did not write judge it:
the kernel's console during the run (any report, including the teardown's
``BUG: Bad rss-counter state`` at its exit), the guest's survival, and the
program's own exit status and signal. Its stdout is kept with the run. A run
that must be repeated after a kernel report (``WARN_ON_ONCE`` fires once per
boot) gets a fresh guest.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from farm.control.reproduce import Reproduction
from farm.protocol import MAX_CONSOLE_BYTES, MAX_OUTPUT_BYTES, GuestInfo, TrialResult, clip
from farm.triage.kinds import VerdictKind
from farm.triage.verdict import PROGRAM_PREFIX, Verdict, judge, signal_name

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from workers.vm import TrialRun

CC = "gcc"
CFLAGS = ("-O2", "-static", "-pthread")
_NUMA_HEADER = re.compile(r"#\s*include\s*<numa(?:if)?\.h>")


class ProgramError(RuntimeError):
    """The program cannot be built or run; the message holds the compiler's words."""


@dataclass(frozen=True)
class Built:
    source: Path
    binary: Path
    sha256: str  # of the source: the program's name in results
    command: list[str]

    @property
    def label(self) -> str:
        return f"{PROGRAM_PREFIX}{self.source.name[:100]}:{self.sha256[:12]}"


def build(source: Path, out_dir: Path) -> Built:
    """``gcc -O2 -static -pthread`` (and ``-lnuma`` when it includes numa.h/numaif.h)."""
    if not source.is_file():
        raise ProgramError(f"{source}: no such file")
    if shutil.which(CC) is None:
        raise ProgramError(f"{CC} not found: install it with `apt-get install gcc libc6-dev`")
    text = source.read_text(errors="replace")
    out_dir.mkdir(parents=True, exist_ok=True)
    binary = out_dir / (source.stem or "program")
    libs = ["-lnuma"] if _NUMA_HEADER.search(text) else []
    command = [CC, *CFLAGS, "-o", str(binary), str(source), *libs]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        hint = ""
        if libs and "cannot find -lnuma" in done.stderr:
            hint = "\n(static libnuma is missing: `apt-get install libnuma-dev`)"
        raise ProgramError(
            f"`{' '.join(command)}` failed (exit {done.returncode}):\n{done.stderr.strip()}{hint}"
        )
    return Built(source, binary, hashlib.sha256(source.read_bytes()).hexdigest(), command)


@dataclass
class ProgramReproduction:
    built: Built
    args: list[str]
    campaign: str
    results: list[tuple[TrialResult, Verdict]] = field(default_factory=list)
    tally: Reproduction = field(default_factory=lambda: Reproduction(""))

    def to_json(self) -> dict[str, Any]:
        return {
            **self.tally.to_json(),
            "program": str(self.built.source),
            "sha256": self.built.sha256,
            "args": self.args,
            "build": " ".join(self.built.command),
            "runs_detail": [
                {
                    "trial_id": r.trial_id,
                    "kernel": r.kernel,
                    "verdict": str(v.kind),
                    "title": v.title,
                    "detail": v.detail,
                    "outcome": r.outcome,
                    "exit_code": r.exit_code,
                    "signal": r.signal,
                    "elapsed_ms": r.elapsed_ms,
                    "output": r.output,
                }
                for r, v in self.results
            ],
        }


def run_result(
    trial_id: str, label: str, kernel: str, run: TrialRun, info: GuestInfo | None,
    booted: bool, started: float, deadline_s: float,
) -> TrialResult:  # fmt: skip
    """One run as the worker protocol's TrialResult (no program JSON: stdout kept raw)."""
    answer = run.answer or {}
    console, truncated = clip(run.console, MAX_CONSOLE_BYTES)
    output, _ = clip(str(answer.get("output", "")), MAX_OUTPUT_BYTES)
    fields: dict[str, Any] = {
        "trial_id": trial_id, "token": label, "kernel": kernel, "worker": socket.gethostname(),
        "guest": info, "booted": booted, "console": console, "console_truncated": truncated,
        "output": output, "started_at": started, "finished_at": time.time(),
    }  # fmt: skip
    status = answer.get("status")
    if run.died:
        return TrialResult(outcome="guest-died", error="the guest stopped during the run", **fields)
    if run.hung or run.answer is None:
        return TrialResult(outcome="timeout", error=f"no answer within {deadline_s:.0f} s",
                           **fields)  # fmt: skip
    fields["elapsed_ms"] = max(0, int(answer.get("elapsed_ms") or 0))
    if status == "timeout":
        return TrialResult(outcome="timeout", error=f"still running at {deadline_s:.0f} s",
                           **fields)  # fmt: skip
    if status == "signaled":
        number = int(answer.get("signal") or 0)
        return TrialResult(outcome="program-error", signal=number,
                           error=f"killed by {signal_name(number)}", **fields)  # fmt: skip
    if status != "exited":
        return TrialResult(outcome="infra-error", error=str(answer.get("error") or status)[:2000],
                           **fields)  # fmt: skip
    return TrialResult(outcome="ok", exit_code=int(answer.get("exit_code") or 0), **fields)


Say = Callable[[str], None]


def campaign_name(built: Built) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return f"program-{built.sha256[:12]}-{stamp}"


def reproduce_program(
    built: Built,
    args: list[str],
    kernels: list[tuple[str, Path]],
    runs: int,
    *,
    cache_dir: Path,
    libvirt_uri: str,
    virt_type: str,
    deadline_s: float,
    memory_mb: int = 1024,
    cpus: int = 2,
    boot_deadline_s: float = 90.0,
    say: Say | None = None,
) -> ProgramReproduction:
    """``runs`` runs of the program on each kernel (name, image); a fresh guest after any
    finding (report, crash, hang). Hit rate and Wilson interval per kernel, as for tokens."""
    from farm.artifacts.guest_image import with_program
    from farm.artifacts.modules import with_modules
    from workers.connection import open_connection
    from workers.trial import _guest_info as guest_info  # the worker's own GuestInfo
    from workers.vm import Guest, GuestConfig, GuestError

    tell = say or (lambda _msg: None)
    initrd = with_program(cache_dir, built.binary)
    name = campaign_name(built)
    outcome = ProgramReproduction(built, args, name, tally=Reproduction(built.label, campaign=name))
    conn = open_connection(libvirt_uri)
    try:
        for kernel_name, image in kernels:
            config = GuestConfig(kernel_name, image, with_modules(initrd, image),  # its modules
                                 cache_dir / "consoles", virt_type, memory_mb, cpus,
                                 boot_deadline_s)  # fmt: skip
            guest: Guest | None = None
            for i in range(runs):
                trial_id = f"{name}-{kernel_name[:60]}-{i}"
                started = time.time()
                booted = False
                if guest is None:
                    guest = Guest(conn, config)
                    tell(f"booting {kernel_name}")
                    try:
                        guest.boot()
                    except GuestError as exc:
                        guest = None
                        result = TrialResult(
                            trial_id=trial_id, token=built.label, kernel=kernel_name,
                            worker=socket.gethostname(), outcome="infra-error",
                            error=str(exc)[:2000], started_at=started, finished_at=time.time(),
                        )  # fmt: skip
                        outcome.results.append((result, judge(result)))
                        outcome.tally.add(kernel_name, VerdictKind.INFRA_ERROR)
                        tell(f"{kernel_name} run {i + 1}/{runs}: infra-error ({str(exc)[:200]})")
                        continue
                    booted = True
                run = guest.run(trial_id, args, deadline_s)
                result = run_result(trial_id, built.label, kernel_name, run, guest_info(guest),
                                    booted, started, deadline_s)  # fmt: skip
                verdict = judge(result)
                outcome.results.append((result, verdict))
                outcome.tally.add(kernel_name, str(verdict.kind), verdict.title)
                tell(
                    f"{kernel_name} run {i + 1}/{runs}: {verdict.kind}"
                    + (f": {verdict.title}" if verdict.title else "")
                    + (f" ({verdict.detail})" if verdict.detail and not verdict.title else "")
                    + f" in {time.time() - started:.1f} s"
                )
                if run.died or run.hung or verdict.kind.finding:
                    guest.destroy()  # a report taints the boot (WARN_ON_ONCE): start afresh
                    guest = None
            if guest is not None:
                guest.destroy()
    finally:
        conn.close()
    return outcome


def store(sessions: sessionmaker[Session], outcome: ProgramReproduction) -> str:
    """Record the runs as a reproduction campaign of kind "program" (done at once: the
    scheduler never runs it); its trials and findings show on the web like any other."""
    from sqlalchemy import select

    from farm.control import campaigns
    from farm.store.db import ensure_kernel
    from farm.store.models import CampaignStatus, Kernel, Trial, TrialStatus
    from farm.store.recorder import record_many

    kernels = sorted({r.kernel for r, _ in outcome.results})
    with sessions.begin() as session:
        spec = campaigns.parse_spec(
            {
                "name": outcome.campaign,
                "kind": "program",
                "kernels": kernels,
                "program": {
                    "file": outcome.built.source.name,
                    "sha256": outcome.built.sha256,
                    "args": outcome.args,
                    "build": " ".join(outcome.built.command),
                },
                "budget": {"trials": max(1, len(outcome.results))},
            },
            "program reproduction",
        )
        row = campaigns.create(session, spec)
        session.flush()
        known = {k.name: k for k in session.scalars(select(Kernel).where(Kernel.name.in_(kernels)))}
        for name in kernels:
            if name not in known:
                known[name] = ensure_kernel(session, name, "", None, None, "reported")
        for result, _ in outcome.results:  # queued rows, so that each run belongs to the campaign
            session.add(Trial(trial_id=result.trial_id, campaign_id=row.id,
                              kernel_id=known[result.kernel].id, token=result.token,
                              params=None, status=TrialStatus.QUEUED))  # fmt: skip
    record_many(sessions, outcome.results)
    with sessions.begin() as session:
        row = campaigns.get(session, outcome.campaign)
        campaigns.transition(row, CampaignStatus.RUNNING)
        campaigns.transition(row, CampaignStatus.DONE)
    return outcome.campaign
