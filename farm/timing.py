"""How long a trial and a batch may take: deadlines, progress and time limits.

Shared by both planes: the scheduler sizes batches and their Celery time limits
with it, the worker checks its settings against it at start and waits for the
guest by it. The arithmetic (docs/timing.md):

- a trial's **deadline** is its expected cost (``TrialParams.expected_s``, the
  cost model) times ``DEADLINE_SAFETY``, at least the configured floor and at
  most what fits in the broker's visibility timeout. The agent kills the trial
  program there; a program still making progress at its deadline is *slow*
  (verdict ``invalid``), not hung;
- a trial is **hung** only when it stopped making progress: no heartbeat from
  the agent and no console output for ``NO_PROGRESS_S`` (the guest stopped),
  or a trial program whose CPU time stood still that long before the deadline;
- a trial's **budget** on the worker is its deadline, plus the agent's kill
  wait, the answer grace and the console-marker wait;
- a batch's **soft limit** is one boot plus every trial's budget plus slack,
  its **hard limit** ``SOFT_TO_HARD_S`` later; the hard limit never exceeds the
  broker's visibility timeout, or Redis would hand a batch that still runs to a
  second worker. The scheduler splits batches (and caps deadlines) to keep it so,
  and a worker refuses to start with settings under which no trial fits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from farm.params import TrialParams

HEARTBEAT_S = 2.0  # the agent's heartbeat interval while a trial runs (guest/agent.c)
NO_PROGRESS_S = 30.0  # no heartbeat and no console output this long: the guest stopped
DEADLINE_SAFETY = 4.0  # deadline = this x the expected cost: room for a host 2.5x oversubscribed
MAX_DEADLINE_S = 3600.0  # what a worker accepts in a message
KILL_WAIT_S = 5.0  # the agent's wait for a killed trial to be reaped (KILL_WAIT_MS)
ANSWER_GRACE_S = 15.0  # the agent answers this long after its deadline, or the guest is hung
MARKER_WAIT_S = 10.0  # the end marker reaches the console file this soon after the answer
BATCH_SLACK_S = 30.0  # per batch: result storage, console reads, guest teardown
SOFT_TO_HARD_S = 60.0  # the hard limit (process killed) this long after the soft one
RECONCILE_GRACE_S = 60.0  # a batch in flight unknown to the broker this long is sent again


class BudgetError(ValueError):
    """Settings under which a trial cannot fit in the visibility timeout; names the fix."""


def trial_deadline_s(params: TrialParams, floor_s: float, cap_s: float = MAX_DEADLINE_S) -> float:
    """The deadline of one trial: its expected cost with a safety factor, floor <= it <= cap."""
    scaled = math.ceil(DEADLINE_SAFETY * params.expected_s())
    return float(max(1.0, min(cap_s, MAX_DEADLINE_S, max(floor_s, scaled))))


def trial_budget_s(deadline_s: float) -> float:
    """Worker time one trial may take once its guest is up."""
    return deadline_s + KILL_WAIT_S + ANSWER_GRACE_S + MARKER_WAIT_S


def batch_limits(deadlines: Sequence[float], boot_s: float) -> tuple[float, float]:
    """The (soft, hard) Celery time limits of a batch of trials with these deadlines."""
    soft = boot_s + sum(trial_budget_s(d) for d in deadlines) + BATCH_SLACK_S
    return soft, soft + SOFT_TO_HARD_S


def max_deadline_s(boot_s: float, visibility_s: float) -> float:
    """The longest deadline a batch of one trial can have under ``visibility_s``."""
    return visibility_s - boot_s - trial_budget_s(0.0) - BATCH_SLACK_S - SOFT_TO_HARD_S


def split_batch(
    deadlines: Sequence[float], limit: int, boot_s: float, visibility_s: float
) -> list[int]:
    """Sizes of consecutive batches (at most ``limit`` trials each) whose hard limit fits.

    A trial too long for a batch of its own still gets one: its deadline must
    have been capped by ``max_deadline_s`` before.
    """
    sizes: list[int] = []
    start = 0
    while start < len(deadlines):
        n = 1
        while (
            n < limit
            and start + n < len(deadlines)
            and batch_limits(deadlines[start : start + n + 1], boot_s)[1] <= visibility_s
        ):
            n += 1
        sizes.append(n)
        start += n
    return sizes


def check_worker_budget(
    *, boot_s: float, floor_s: float, visibility_s: float, task_hard_limit_s: float
) -> None:
    """At worker start: a trial at the deadline floor must fit, or nothing runs safely."""
    _, hard = batch_limits([floor_s], boot_s)
    if hard > visibility_s:
        raise BudgetError(
            f"a single trial needs up to {hard:.0f} s (boot {boot_s:.0f} s + deadline "
            f"{floor_s:.0f} s + grace and marker wait {trial_budget_s(0):.0f} s + slack "
            f"{BATCH_SLACK_S + SOFT_TO_HARD_S:.0f} s) but the broker's visibility timeout is "
            f"{visibility_s:.0f} s, after which Redis hands a running trial to another worker: "
            f"raise FARM_VISIBILITY_TIMEOUT_S (visibility_timeout_s) to at least {math.ceil(hard)} "
            "or lower trial_deadline_s / boot_deadline_s"
        )
    if task_hard_limit_s > visibility_s:
        raise BudgetError(
            f"the default task time limit ({task_hard_limit_s:.0f} s, workers/celeryconfig.py) "
            f"exceeds the broker's visibility timeout ({visibility_s:.0f} s): raise "
            f"FARM_VISIBILITY_TIMEOUT_S to at least {math.ceil(task_hard_limit_s)}"
        )


class ProgressWatch:
    """Has a running trial stopped making progress? Fed by the worker, read with a clock.

    Progress is a heartbeat from the agent, console output, or (from the
    heartbeat) the trial program's CPU time going up. ``guest_stalled`` says the
    whole guest stopped (nothing at all for ``window_s``); ``program_stalled``
    says the agent still beats but the program's CPU time stood still for
    ``window_s`` (stuck in the kernel, or asleep for good).
    """

    def __init__(self, now: float, window_s: float = NO_PROGRESS_S) -> None:
        self.window_s = window_s
        self.last_sign = now  # last heartbeat or console growth
        self.last_beat = now  # last heartbeat (or the start)
        self.last_cpu_change = now
        self.cpu_ms: int | None = None
        self.console_size = -1
        self.heartbeats = 0

    def heartbeat(self, now: float, cpu_ms: int | None) -> None:
        self.heartbeats += 1
        self.last_sign = self.last_beat = now
        if cpu_ms is not None and cpu_ms != self.cpu_ms:
            if self.cpu_ms is None or cpu_ms > self.cpu_ms:
                self.last_cpu_change = now
            self.cpu_ms = cpu_ms

    def console(self, now: float, size: int) -> None:
        if size != self.console_size:
            if self.console_size >= 0:
                self.last_sign = now
            self.console_size = size

    def guest_stalled(self, now: float) -> bool:
        return now - self.last_sign >= self.window_s

    def agent_silent(self, now: float) -> bool:
        """No heartbeat for the window, whatever the console does (a kernel spewing
        lockup reports while the agent cannot run has stopped making progress too)."""
        return now - self.last_beat >= self.window_s

    def program_stalled(self, now: float) -> bool:
        return self.heartbeats > 0 and now - self.last_cpu_change >= self.window_s
