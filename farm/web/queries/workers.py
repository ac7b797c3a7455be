"""The workers page: the scheduler's heartbeat table, or, before any heartbeat was
recorded, the worker names seen in the last 24 hours of results. Whether a worker
is live is farm.control.liveness's rule, shared with ``farm campaign status``."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from farm.control.liveness import ALIVE_AFTER, is_live
from farm.store.models import Trial, Worker
from farm.web import schemas as s
from farm.web.cache import TTLCache
from farm.web.queries.common import utc_now

MAX_WORKERS = 1000


def _workers_from_results(session: Session) -> dict[str, tuple[int, datetime | None]]:
    """Trials and last finish per worker name over the last 24 hours."""
    rows = session.execute(
        select(Trial.worker, func.count(), func.max(Trial.finished_at))
        .where(Trial.finished_at >= utc_now() - timedelta(hours=24), Trial.worker.is_not(None))
        .group_by(Trial.worker)
    ).all()
    return {w: (n, last) for w, n, last in rows if w is not None}


def list_workers(session: Session, cache: TTLCache) -> s.Workers:
    """Workers from the scheduler's table, else (no heartbeat yet) as seen in recent results."""
    now = utc_now()
    since = now - timedelta(hours=24)
    seen = cache.get(("workers-24h",), _workers_from_results, session)
    rows = session.scalars(select(Worker).order_by(Worker.last_seen.desc()).limit(MAX_WORKERS))
    items = [
        s.WorkerInfo(
            name=w.name,
            alive=is_live(w.last_seen, now),
            last_seen=w.last_seen,
            first_seen=w.first_seen,
            info=w.info,
            trials_24h=seen.get(w.name, (0, None))[0],
        )
        for w in rows
    ]
    if items:
        return s.Workers(source="workers-table", alive_after=now - ALIVE_AFTER, items=items)
    items = [
        s.WorkerInfo(name=name, alive=is_live(last, now), last_seen=last, trials_24h=n)
        for name, (n, last) in sorted(seen.items(), key=lambda kv: kv[1][1] or since, reverse=True)
    ]
    return s.Workers(source="results", alive_after=now - ALIVE_AFTER, items=items)
