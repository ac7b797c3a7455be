"""The trials list (keyset pages) and a trial's page.

Lists of trials are keyset-paginated on ``(finished_at, id)`` and filtered on
a column that leads one of the trial indexes (campaign, verdict, kernel,
finding, token), so a page costs one short index range scan; nothing counts
all trials to draw page numbers.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, or_, select
from sqlalchemy.orm import Session

from farm.store.models import Campaign, Kernel, Trial, TrialStatus
from farm.triage.verdict import PROGRAM_PREFIX
from farm.web import schemas as s
from farm.web.queries.common import MAX_PER_PAGE, PER_PAGE, QueryError, storable
from farm.web.stats import EPOCH
from farm.web.text import stored_console

TRIAL_STATUS_FILTERS = tuple(
    str(v) for v in (TrialStatus.DONE, TrialStatus.QUEUED, TrialStatus.RUNNING)
)


def reproduce_command(token: str, kernel: str) -> str:
    """The command line that reruns a trial (quoted: tokens carry ``~`` and ``=``)."""
    if token.startswith(PROGRAM_PREFIX):  # program:<file>:<sha12>, a reported C program
        source = token.removeprefix(PROGRAM_PREFIX).rsplit(":", 1)[0]
        return f"farm reproduce --program {shlex.quote(source)} --kernel {shlex.quote(kernel)}"
    return f"farm reproduce {shlex.quote(token)} --kernel {shlex.quote(kernel)}"


@dataclass(frozen=True)
class TrialFilter:
    """Filters of the trials list; each narrows on a column that leads a trial index."""

    campaign: str | None = None
    kernel: str | None = None
    verdict: str | None = None
    finding: int | None = None
    token: str | None = None
    status: str = TrialStatus.DONE

    def as_params(self) -> dict[str, str]:
        """The filters as query parameters (for links to the next page)."""
        out = {
            "campaign": self.campaign,
            "kernel": self.kernel,
            "verdict": self.verdict,
            "finding": None if self.finding is None else str(self.finding),
            "token": self.token,
            "status": None if self.status == TrialStatus.DONE else self.status,
        }
        return {k: v for k, v in out.items() if v}


# A cursor is ``<finished_at in epoch microseconds>_<id>`` of the last trial shown.
# Queued and running trials (no finish time) order by id alone and write 0.
CURSOR_PATTERN = r"^[0-9]{1,17}_[0-9]{1,18}$"  # 17 digits: up to year 5138; 18: below 2**63
CURSOR_HELP = "next_cursor of the previous page (omit for the newest trials)"
_CURSOR_RE = re.compile(CURSOR_PATTERN)


def _encode_cursor(finished_at: datetime | None, pk: int) -> str:
    micros = 0 if finished_at is None else (finished_at - EPOCH) // timedelta(microseconds=1)
    return f"{micros}_{pk}"


def _decode_cursor(cursor: str) -> tuple[datetime, int]:
    if not _CURSOR_RE.match(cursor):
        raise QueryError(f"malformed cursor {cursor[:40]!r}: use the next_cursor a page gave")
    micros, pk = cursor.split("_", 1)
    return EPOCH + timedelta(microseconds=int(micros)), int(pk)


_TRIAL_COLUMNS = (
    Trial.id,
    Trial.trial_id,
    Trial.token,
    Campaign.name.label("campaign"),
    Kernel.name.label("kernel"),
    Trial.status,
    Trial.verdict,
    Trial.title,
    Trial.finding_id,
    Trial.worker,
    Trial.finished_at,
    Trial.elapsed_ms,
)


# statements are immutable: each list narrows this one
_TRIAL_SELECT = (
    select(*_TRIAL_COLUMNS)
    .join(Kernel, Kernel.id == Trial.kernel_id)
    .outerjoin(Campaign, Campaign.id == Trial.campaign_id)
)


def _summary(row: Any) -> s.TrialSummary:
    return s.TrialSummary(**{c: getattr(row, c) for c in s.TrialSummary.model_fields})


def list_trials(
    session: Session, filt: TrialFilter, cursor: str | None = None, limit: int = PER_PAGE
) -> s.TrialList:
    """A keyset page of trials, newest first.

    Done trials are ordered by ``(finished_at, id)``, which every filtered
    index ends in; queued and running ones (no finish time yet) by id.
    """
    if not 1 <= limit <= MAX_PER_PAGE:
        raise QueryError(f"limit must be within 1..{MAX_PER_PAGE}")
    if filt.status not in TRIAL_STATUS_FILTERS:
        raise QueryError(f"status must be one of {', '.join(TRIAL_STATUS_FILTERS)}")
    if not storable(filt.campaign, filt.kernel, filt.verdict, filt.token) or not (
        filt.finding is None or 1 <= filt.finding <= s.MAX_FINDING_ID
    ):
        return s.TrialList(items=[], next_cursor=None)  # nothing stored could match
    where: list[ColumnElement[bool]] = []
    if filt.campaign is not None:  # ids first: the index is on the id, not the name
        campaign_id = session.scalar(select(Campaign.id).where(Campaign.name == filt.campaign))
        if campaign_id is None:
            return s.TrialList(items=[], next_cursor=None)
        where.append(Trial.campaign_id == campaign_id)
    if filt.kernel is not None:
        kernel_id = session.scalar(select(Kernel.id).where(Kernel.name == filt.kernel))
        if kernel_id is None:
            return s.TrialList(items=[], next_cursor=None)
        where.append(Trial.kernel_id == kernel_id)
    if filt.verdict is not None:
        where.append(Trial.verdict == filt.verdict)
    if filt.finding is not None:
        where.append(Trial.finding_id == filt.finding)
    if filt.token is not None:
        where.append(Trial.token == filt.token.strip())
    stmt = _TRIAL_SELECT.where(*where)
    after = _decode_cursor(cursor) if cursor else None
    if filt.status == TrialStatus.DONE:
        stmt = stmt.where(Trial.finished_at.is_not(None))
        if after is not None:
            at, pk = after
            # the plain bound lets the index range start at the cursor; the OR breaks ties
            stmt = stmt.where(
                Trial.finished_at <= at,
                or_(Trial.finished_at < at, and_(Trial.finished_at == at, Trial.id < pk)),
            )
        stmt = stmt.order_by(Trial.finished_at.desc(), Trial.id.desc())
    else:
        stmt = stmt.where(Trial.status == filt.status)
        if after is not None:
            stmt = stmt.where(Trial.id < after[1])
        stmt = stmt.order_by(Trial.id.desc())
    rows = session.execute(stmt.limit(limit + 1)).all()
    items = [_summary(r) for r in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = items[-1]
        next_cursor = _encode_cursor(
            last.finished_at if filt.status == TrialStatus.DONE else None, last.id
        )
    return s.TrialList(items=items, next_cursor=next_cursor)


_ORACLE_FIELDS = tuple(s.Oracles.model_fields)


def trial_detail(session: Session, pk: int) -> s.TrialDetail | None:
    """One trial with everything a triager needs to rerun and judge it."""
    if not 1 <= pk <= s.MAX_TRIAL_ID:
        return None
    row = session.execute(
        select(Trial, Campaign.name, Kernel.name)
        .join(Kernel, Kernel.id == Trial.kernel_id)
        .outerjoin(Campaign, Campaign.id == Trial.campaign_id)
        .where(Trial.id == pk)
    ).one_or_none()
    if row is None:
        return None
    trial, campaign, kernel = row
    console = stored_console(trial.console, getattr(trial, "console_z", None))
    return s.TrialDetail(
        id=trial.id,
        trial_id=trial.trial_id,
        token=trial.token,
        campaign=campaign,
        kernel=kernel,
        status=trial.status,
        verdict=trial.verdict,
        title=trial.title,
        finding_id=trial.finding_id,
        worker=trial.worker,
        finished_at=trial.finished_at,
        elapsed_ms=trial.elapsed_ms,
        params=trial.params,
        reproduce_command=reproduce_command(trial.token, kernel),
        outcome=trial.outcome,
        verdict_detail=trial.verdict_detail,
        error=trial.error,
        boot_id=trial.boot_id,
        booted=trial.booted,
        numa_nodes=trial.numa_nodes,
        exit_code=trial.exit_code,
        signal=trial.signal,
        started_at=trial.started_at,
        oracles=s.Oracles(**{name: getattr(trial, name) for name in _ORACLE_FIELDS}),
        window=s.WindowCounts.of(trial),
        console=console,
        console_kept=bool(console) or trial.status != TrialStatus.DONE,
        output=str((trial.result or {}).get("output") or ""),
    )
