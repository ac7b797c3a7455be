"""The farm's vocabulary of verdicts: every verdict kind and the sets derived from it.

This is the one place a verdict kind is defined. Each kind carries the three
facts the rest of the farm asks about it, so that adding a kind is one line:

- ``finding``: the kernel did something wrong; the trial files (or counts
  towards) a finding, the search scores it as a hit, a reproduction counts it
  as a hit.
- ``tested``: the trial exercised the kernel, so it counts as a *run* (of a
  reproduction, a minimisation step, a rate on the web). ``invalid`` and
  ``infra-error`` trials tested nothing: a hit rate must not count them.
- severity: the enum's order, most severe first. A trial gets the first kind
  whose rule applies (``farm.triage.verdict``); tables list kinds in this order.

Like KernelCI, infrastructure failures are a kind of their own and never a
result about the kernel.
"""

from __future__ import annotations

from enum import StrEnum


class VerdictKind(StrEnum):
    """A trial's verdict kind, most severe first; the value is what the database stores."""

    INFRA_ERROR = "infra-error"
    INVALID = "invalid"
    GUEST_CRASH = "guest-crash"
    HANG = "hang"
    KERNEL_REPORT = "kernel-report"
    DATA_MISMATCH = "data-mismatch"  # user data not what POSIX requires after a zap
    PROGRAM_CRASH = "program-crash"
    SMAPS_MISMATCH = "smaps-mismatch"
    COUNTER_MISMATCH = "counter-mismatch"
    CLEAN = "clean"

    @property
    def finding(self) -> bool:
        """The kernel misbehaved: a finding, a hit for search and reproduction."""
        return self not in _NOT_FINDINGS

    @property
    def tested(self) -> bool:
        """The trial exercised the kernel: it counts as a run."""
        return self not in _UNTESTED

    @property
    def damage(self) -> bool:
        """Lasting damage an oracle measured (accounting or user data), not a symptom."""
        return self in _DAMAGE


_UNTESTED = frozenset({VerdictKind.INFRA_ERROR, VerdictKind.INVALID})
_NOT_FINDINGS = _UNTESTED | {VerdictKind.CLEAN}
_DAMAGE = frozenset(
    {VerdictKind.DATA_MISMATCH, VerdictKind.SMAPS_MISMATCH, VerdictKind.COUNTER_MISMATCH}
)
# The teardown oracle speaks through the console: check_mm()'s report on a counter left
# off when the trial's mm was freed. Its title, as the console parser gives it.
TEARDOWN_TITLE = "BUG: Bad rss-counter state"

KINDS: tuple[str, ...] = tuple(k.value for k in VerdictKind)
FINDING_KINDS: frozenset[str] = frozenset(k.value for k in VerdictKind if k.finding)
UNTESTED_KINDS: frozenset[str] = frozenset(k.value for k in VerdictKind if not k.tested)


def is_finding(kind: str) -> bool:
    """Whether a stored verdict string is a finding kind (unknown strings are not)."""
    return kind in FINDING_KINDS


def is_run(kind: str) -> bool:
    """Whether a trial with this stored verdict counts as a run (tested the kernel).

    The one definition ``farm reproduce``, the web's reproducibility column and
    minimisation share: a rate's denominator.
    """
    return kind in KINDS and kind not in UNTESTED_KINDS


def is_damage(kind: str, title: str | None) -> bool:
    """Whether a stored verdict is lasting damage: a damage oracle, or the teardown oracle.

    The counter, VMA and data oracles have kinds of their own; the teardown
    oracle's ``Bad rss-counter`` is a kernel report with its title. A WARN at the
    skip site marks the race window, not damage.
    """
    if kind in KINDS and VerdictKind(kind).damage:
        return True
    return kind == VerdictKind.KERNEL_REPORT and title == TEARDOWN_TITLE


def severity(kind: str) -> int:
    """Sort key, most severe first; unknown strings (old rows) sort last."""
    try:
        return KINDS.index(kind)
    except ValueError:
        return len(KINDS)
