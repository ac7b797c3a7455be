"""The kernels page: each registered kernel with its trials (cached count), findings and
last trial. Kernels are a small table; the trials per kernel are one cached GROUP BY."""

from __future__ import annotations

from sqlalchemy import distinct, func, select
from sqlalchemy.orm import Session

from farm.store.models import FindingCount, Kernel, Trial
from farm.web import schemas as s
from farm.web.cache import TTLCache


def list_kernels(session: Session, cache: TTLCache) -> list[s.KernelInfo]:
    """Kernels with their trial counts (cached), findings seen and last trial."""
    kernels = list(session.scalars(select(Kernel).order_by(Kernel.name)))

    def trial_counts(db: Session) -> dict[int, int]:
        rows = db.execute(select(Trial.kernel_id, func.count()).group_by(Trial.kernel_id))
        return {k: n for k, n in rows}

    counts = cache.get(("kernel-trials",), trial_counts, session)
    findings = dict(
        session.execute(
            select(FindingCount.kernel_id, func.count(distinct(FindingCount.finding_id))).group_by(
                FindingCount.kernel_id
            )
        ).all()
    )
    last = {}
    for kernel in kernels:  # one short backward index scan each (ix_trials_kernel_finished)
        last[kernel.id] = session.scalar(
            select(func.max(Trial.finished_at)).where(Trial.kernel_id == kernel.id)
        )
    return [
        s.KernelInfo(
            id=k.id,
            name=k.name,
            release=k.release,
            source=k.source,
            sha256=k.sha256,
            image_path=k.image_path,
            created_at=k.created_at,
            provenance=k.provenance,
            trials=counts.get(k.id, 0),
            findings=findings.get(k.id, 0),
            last_trial=last[k.id],
        )
        for k in kernels
    ]
