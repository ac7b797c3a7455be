"""The front page: trials in total and per hour, active campaigns, open findings, workers.

The total is PostgreSQL's planner estimate (``pg_class.reltuples``); SQLite, the
single-host backend, counts. Aggregates are read through the app's TTLCache.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from farm.control.liveness import ACTIVE_STATUSES
from farm.store.models import Campaign, Finding, FindingStatus, Trial
from farm.triage.kinds import KINDS
from farm.web import schemas as s
from farm.web.cache import TTLCache
from farm.web.queries.campaigns import campaign_summary, status_counts
from farm.web.queries.common import utc_now
from farm.web.queries.findings import finding_summaries
from farm.web.queries.workers import list_workers
from farm.web.stats import dialect, series


def trials_total(session: Session, cache: TTLCache) -> tuple[int, bool]:
    """(number of trials, exact?): PostgreSQL's estimate, else a (cached) count."""

    def compute(db: Session) -> tuple[int, bool]:
        if dialect(db) == "postgresql":
            estimate = db.scalar(
                text("SELECT reltuples::bigint FROM pg_class WHERE oid = 'trials'::regclass")
            )
            if estimate is not None and estimate >= 0:  # -1: never analysed yet
                return int(estimate), False
        return int(db.scalar(select(func.count()).select_from(Trial)) or 0), True

    return cache.get(("trials-total",), compute, session)


def _hourly(session: Session) -> s.Series:
    """Trials per hour and verdict over the last 24 hours.

    ``verdict IN (every kind)`` is always true for a done trial, but it lets
    PostgreSQL answer from ix_trials_verdict_finished alone (an index-only
    range per verdict) instead of visiting a day of trial rows.
    """
    now = utc_now()
    where = [Trial.verdict.in_(KINDS), Trial.finished_at.is_not(None)]
    return series(session, where, now - timedelta(hours=23), now, width=3600)


def front_page(session: Session, cache: TTLCache) -> s.Overview:
    """The front page: active campaigns, trials per hour, open findings, workers."""
    total, exact = trials_total(session, cache)
    findings_open = int(
        session.scalar(
            select(func.count()).select_from(Finding).where(Finding.status == FindingStatus.OPEN)
        )
        or 0
    )
    active = list(
        session.scalars(
            select(Campaign)
            .where(Campaign.status.in_(sorted(ACTIVE_STATUSES)))
            .order_by(Campaign.created_at.desc(), Campaign.id.desc())
            .limit(20)
        )
    )
    counts = status_counts(session, cache, [c.id for c in active])
    hourly = cache.get(("hourly",), _hourly, session)
    recent = session.execute(
        select(Finding, Trial.token)
        .outerjoin(Trial, Trial.id == Finding.example_trial_id)
        .where(Finding.status == FindingStatus.OPEN)
        .order_by(Finding.last_seen.desc(), Finding.id.desc())
        .limit(10)
    ).all()
    return s.Overview(
        trials_total=total,
        trials_total_exact=exact,
        findings_open=findings_open,
        campaigns=[campaign_summary(c, counts.get(c.id, {})) for c in active],
        hourly=hourly,
        recent_findings=finding_summaries(session, [(f, t) for f, t in recent]),
        workers=list_workers(session, cache),
    )
