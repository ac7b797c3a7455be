"""The findings table and a finding's page, with reproducibility.

Findings and finding counts are small tables: they are counted and sorted freely.

Reproducibility of a finding (syzkaller's repro, ClusterFuzz's reliability):
the runs of the finding's best seed (its example trial's token) in campaigns
with ``kind = "reproduce"``; a run *hits* when its trial landed in the finding.
What counts as a run is farm.triage.kinds.is_run, as for ``farm reproduce``:
trials that tested nothing (``invalid``, ``infra-error``) are not runs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from farm.store.models import (
    Campaign,
    CampaignStatus,
    Finding,
    FindingCount,
    FindingStatus,
    Kernel,
    Trial,
    TrialStatus,
)
from farm.triage.kinds import is_run
from farm.web import schemas as s
from farm.web.queries.common import (
    MAX_PAGE,
    MAX_PER_PAGE,
    PER_PAGE,
    QueryError,
    page_count,
    spec_budget,
    spec_kernels,
    spec_token,
    storable,
)
from farm.web.queries.trials import trial_detail
from farm.web.text import excerpt, first_line

FINDING_SORTS: dict[str, Any] = {
    "title": Finding.title,
    "kind": Finding.kind,
    "count": Finding.trial_count,
    "first": Finding.first_seen,
    "last": Finding.last_seen,
    "id": Finding.id,
}
FINDING_STATUS_FILTERS = (*(str(v) for v in FindingStatus), "all")


@dataclass
class _ReproCampaign:
    name: str
    status: str
    token: str
    kernels: list[str]
    budget: int | None
    done: int = 0
    runs: int = 0
    hits: dict[int, int] | None = None

    @property
    def pending(self) -> int:
        if self.status in (CampaignStatus.STOPPED, CampaignStatus.DONE) or self.budget is None:
            return 0
        return max(0, self.budget - self.done)


def _repro_campaigns(session: Session, tokens: Iterable[str]) -> dict[str, list[_ReproCampaign]]:
    """Reproduce campaigns by the token they run, with their runs counted per finding."""
    wanted = sorted(set(tokens))
    if not wanted:
        return {}
    rows = session.execute(
        select(Campaign.id, Campaign.name, Campaign.status, Campaign.spec).where(
            Campaign.spec["kind"].as_string() == "reproduce",
            Campaign.spec["token"].as_string().in_(wanted),
        )
    ).all()
    by_id: dict[int, _ReproCampaign] = {}
    for row in rows:
        token = spec_token(row.spec)
        if token is None:
            continue
        by_id[row.id] = _ReproCampaign(
            row.name, row.status, token, spec_kernels(row.spec), spec_budget(row.spec)[0], hits={}
        )
    if by_id:  # ix_trials_campaign_status narrows it; reproduce campaigns are small
        counted = session.execute(
            select(Trial.campaign_id, Trial.finding_id, Trial.verdict, func.count())
            .where(Trial.campaign_id.in_(list(by_id)), Trial.status == TrialStatus.DONE)
            .group_by(Trial.campaign_id, Trial.finding_id, Trial.verdict)
        ).all()
        for campaign_id, finding_id, verdict, n in counted:
            if campaign_id is None:
                continue
            campaign = by_id[campaign_id]
            campaign.done += n
            if verdict is None or not is_run(verdict):
                continue
            campaign.runs += n
            if finding_id is not None and campaign.hits is not None:
                campaign.hits[finding_id] = campaign.hits.get(finding_id, 0) + n
    out: dict[str, list[_ReproCampaign]] = defaultdict(list)
    for campaign in sorted(by_id.values(), key=lambda c: c.name):
        out[campaign.token].append(campaign)
    return out


def _reproducibility(
    finding_id: int, campaigns: Sequence[_ReproCampaign]
) -> s.Reproducibility | None:
    if not campaigns:
        return None
    return s.Reproducibility(
        hits=sum((c.hits or {}).get(finding_id, 0) for c in campaigns),
        runs=sum(c.runs for c in campaigns),
        pending=sum(c.pending for c in campaigns),
        campaigns=[c.name for c in campaigns],
    )


@dataclass(frozen=True)
class FindingQuery:
    """The findings table's filters and order, as query parameters spell them."""

    status: str = FindingStatus.OPEN
    kind: str | None = None
    kernel: str | None = None
    q: str | None = None
    sort: str = "last"
    order: str = "desc"
    page: int = 1
    per_page: int = PER_PAGE

    def checked(self) -> FindingQuery:
        if self.sort not in FINDING_SORTS:
            raise QueryError(f"sort must be one of {', '.join(FINDING_SORTS)}, not {self.sort!r}")
        if self.order not in ("asc", "desc"):
            raise QueryError(f"order must be asc or desc, not {self.order!r}")
        if self.status not in FINDING_STATUS_FILTERS:
            raise QueryError(
                f"status must be one of {', '.join(FINDING_STATUS_FILTERS)}, not {self.status!r}"
            )
        if not 1 <= self.page <= MAX_PAGE or not 1 <= self.per_page <= MAX_PER_PAGE:
            raise QueryError(
                f"page must be within 1..{MAX_PAGE} and per_page within 1..{MAX_PER_PAGE}"
            )
        return self


def _like_pattern(text_: str) -> str:
    escaped = text_.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def list_findings(session: Session, query: FindingQuery) -> s.FindingList:
    """One page of the findings table (syzbot's bug list)."""
    query = query.checked()
    if not storable(query.kind, query.kernel, query.q):  # nothing stored could match
        return s.FindingList(items=[], total=0, page=query.page, per_page=query.per_page, pages=1)
    where: list[ColumnElement[bool]] = []
    if query.status != "all":
        where.append(Finding.status == query.status)
    if query.kind:
        where.append(Finding.kind == query.kind)
    if query.q:
        where.append(Finding.title.ilike(_like_pattern(query.q), escape="\\"))
    if query.kernel:
        seen_on = (
            select(FindingCount.finding_id)
            .join(Kernel, Kernel.id == FindingCount.kernel_id)
            .where(Kernel.name == query.kernel)
        )
        where.append(Finding.id.in_(seen_on))
    total = int(session.scalar(select(func.count()).select_from(Finding).where(*where)) or 0)
    column = FINDING_SORTS[query.sort]
    order = [column.desc(), Finding.id.desc()] if query.order == "desc" else [column, Finding.id]
    rows = session.execute(
        select(Finding, Trial.token)
        .outerjoin(Trial, Trial.id == Finding.example_trial_id)
        .where(*where)
        .order_by(*order)
        .limit(query.per_page)
        .offset((query.page - 1) * query.per_page)
    ).all()
    items = finding_summaries(session, [(f, token) for f, token in rows])
    return s.FindingList(
        items=items,
        total=total,
        page=query.page,
        per_page=query.per_page,
        pages=page_count(total, query.per_page),
    )


def _kernels_of(session: Session, finding_ids: Sequence[int]) -> dict[int, list[s.KernelCount]]:
    if not finding_ids:
        return {}
    rows = session.execute(
        select(
            FindingCount.finding_id,
            Kernel.name,
            func.sum(FindingCount.count),
            func.min(FindingCount.first_seen),
            func.max(FindingCount.last_seen),
        )
        .join(Kernel, Kernel.id == FindingCount.kernel_id)
        .where(FindingCount.finding_id.in_(list(finding_ids)))
        .group_by(FindingCount.finding_id, Kernel.name)
    ).all()
    out: dict[int, list[s.KernelCount]] = defaultdict(list)
    for finding_id, name, count, first, last in rows:
        out[finding_id].append(
            s.KernelCount(kernel=name, count=int(count or 0), first_seen=first, last_seen=last)
        )
    for counts in out.values():
        counts.sort(key=lambda k: (-k.count, k.kernel))
    return out


def finding_summaries(
    session: Session, rows: Sequence[tuple[Finding, str | None]]
) -> list[s.FindingSummary]:
    ids = [f.id for f, _ in rows]
    kernels = _kernels_of(session, ids)
    repro = _repro_campaigns(session, (token for _, token in rows if token))
    return [
        s.FindingSummary(
            id=f.id,
            kind=f.kind,
            title=f.title,
            status=f.status,
            count=f.trial_count,
            first_seen=f.first_seen,
            last_seen=f.last_seen,
            kernels=kernels.get(f.id, []),
            reproducibility=_reproducibility(f.id, repro.get(token, [])) if token else None,
            best_seed=token,
            example_trial_id=f.example_trial_id,
        )
        for f, token in rows
    ]


def finding_detail(session: Session, finding_id: int) -> s.FindingDetail | None:
    """A finding with its report, example console and per-kernel/campaign counts."""
    if not 1 <= finding_id <= s.MAX_FINDING_ID:
        return None
    finding = session.get(Finding, finding_id)
    if finding is None:
        return None
    example = trial_detail(session, finding.example_trial_id) if finding.example_trial_id else None
    token = example.token if example else None
    [summary] = finding_summaries(session, [(finding, token)])
    per_campaign = [
        s.CampaignCount(campaign=name, count=int(n or 0))
        for name, n in session.execute(
            select(Campaign.name, func.sum(FindingCount.count))
            .select_from(FindingCount)
            .outerjoin(Campaign, Campaign.id == FindingCount.campaign_id)
            .where(FindingCount.finding_id == finding_id)
            .group_by(Campaign.name)
            .order_by(func.sum(FindingCount.count).desc())
            .limit(50)
        )
    ]
    repro = _repro_campaigns(session, [token] if token else []).get(token or "", [])
    available = list(
        session.scalars(
            select(Kernel.name).where(Kernel.image_path.is_not(None)).order_by(Kernel.name)
        )
    )
    console_excerpt = None
    if example is not None and example.console:
        console_excerpt = excerpt(example.console, first_line(finding.report))
    return s.FindingDetail(
        **summary.model_dump(),
        signature=finding.signature,
        report=finding.report,
        example_trial=example,
        console_excerpt=console_excerpt,
        per_kernel=summary.kernels,
        per_campaign=per_campaign,
        reproductions=[
            s.ReproductionRun(
                campaign=c.name,
                status=c.status,
                kernels=c.kernels,
                hits=(c.hits or {}).get(finding_id, 0),
                runs=c.runs,
                pending=c.pending,
            )
            for c in repro
        ],
        kernels_available=available,
    )
