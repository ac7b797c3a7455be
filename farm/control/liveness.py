"""Which workers are live and which kernels they serve: one definition for CLI, web and API.

Workers never write to the database. The scheduler asks every worker which
queues it consumes (a Celery ``active_queues`` broadcast, every
``HEARTBEAT_EVERY_S`` seconds) and stores the answers in the ``workers`` table:
``last_seen`` and ``info["queues"]``. A worker is *live* when it answered within
``ALIVE_AFTER``; it *serves* a kernel when it consumes that kernel's queue (or
its ``.cpu`` twin). A worker without ``--kernel`` takes up kernels added to its
cache within seconds (``workers/kernel_watch.py``); one started with ``--kernel``,
or a host that lacks the kernel, leaves a campaign waiting, and
``unserved_kernels`` is how status, the web and the API say so.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from farm.protocol import kernel_queue
from farm.store.models import CampaignStatus, Worker

# A worker heard from more recently counts as live. Generous against the
# scheduler's 15 s heartbeat: a scheduler restart or one broadcast that timed
# out must not declare the whole farm dead.
ALIVE_AFTER = timedelta(minutes=5)
# the statuses in which a campaign waits for workers
ACTIVE_STATUSES = frozenset({CampaignStatus.CREATED, CampaignStatus.RUNNING, CampaignStatus.PAUSED})


def is_live(last_seen: datetime | None, now: datetime | None = None) -> bool:
    """Whether a worker last heard from at ``last_seen`` is live at ``now``."""
    if last_seen is None:
        return False
    now = now or datetime.now(UTC)
    if last_seen.tzinfo is None:  # rows written without a zone are UTC
        last_seen = last_seen.replace(tzinfo=UTC)
    return last_seen >= now - ALIVE_AFTER


def queues_of(info: Any) -> frozenset[str]:
    """The queue names a worker reported (``info`` is JSON from the table: read defensively)."""
    queues = info.get("queues") if isinstance(info, dict) else None
    if not isinstance(queues, list):
        return frozenset()
    return frozenset(q for q in queues if isinstance(q, str))


def serves(queues: Iterable[str], kernel: str) -> bool:
    """Whether a worker consuming ``queues`` runs trials on ``kernel``."""
    wanted = kernel_queue(kernel)
    return any(q in (wanted, wanted + ".cpu") for q in queues)


def live_queues(session: Session, now: datetime | None = None) -> list[frozenset[str]]:
    """The queues of each live worker."""
    now = now or datetime.now(UTC)
    rows = session.execute(
        select(Worker.last_seen, Worker.info).where(Worker.last_seen >= now - ALIVE_AFTER)
    ).all()
    return [queues_of(info) for last_seen, info in rows if is_live(last_seen, now)]


def unserved_message(kernel: str, *, any_live: bool = True) -> str:
    """What to tell the person whose campaign waits on ``kernel``: the fact and the fix."""
    command = f"farm worker --kernel {shlex.quote(kernel)}"
    message = f"no live worker serves kernel {kernel}: start `{command}` on a host that has it"
    if not any_live:
        minutes = int(ALIVE_AFTER.total_seconds() // 60)
        message += (
            f" (no worker at all was heard from in the last {minutes} minutes: workers are "
            "recorded by `farm scheduler`; is it running?)"
        )
    return message


def unserved_kernels(
    session: Session, status: str, kernels: Iterable[str], now: datetime | None = None
) -> dict[str, str]:
    """Kernels of a campaign (in ``status``) that no live worker serves -> what to tell.

    Empty when every kernel is served, or when the campaign no longer waits for
    workers (stopped, done).
    """
    if status not in ACTIVE_STATUSES:
        return {}
    queues = live_queues(session, now)
    return {
        k: unserved_message(k, any_live=bool(queues))
        for k in dict.fromkeys(kernels)
        if not any(serves(q, k) for q in queues)
    }
