"""The campaigns list and a campaign's page: progress, verdicts, charts, findings.

Campaigns are a small table; the trials they own are counted per status through
the app's TTLCache (index-only on ix_trials_campaign_status).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from functools import partial

from sqlalchemy import ColumnElement, func, or_, select
from sqlalchemy.orm import Session

from farm.control.campaigns import ACTIONS, TRANSITIONS
from farm.control.liveness import unserved_kernels
from farm.store.models import Campaign, Finding, FindingCount, Trial, TrialStatus
from farm.web import schemas as s
from farm.web import stats
from farm.web.cache import TTLCache
from farm.web.queries.common import (
    MAX_PAGE,
    MAX_PER_PAGE,
    PER_PAGE,
    QueryError,
    page_count,
    spec_budget,
    spec_kernels,
    spec_kind,
    spec_token,
    storable,
)


def status_counts(
    session: Session, cache: TTLCache, campaign_ids: Sequence[int]
) -> dict[int, dict[str, int]]:
    """Trials per status of each campaign (index-only on ix_trials_campaign_status)."""
    if not campaign_ids:
        return {}

    def compute(db: Session) -> dict[int, dict[str, int]]:
        out: dict[int, dict[str, int]] = defaultdict(dict)
        for campaign_id, status, n in db.execute(
            select(Trial.campaign_id, Trial.status, func.count())
            .where(Trial.campaign_id.in_(list(campaign_ids)))
            .group_by(Trial.campaign_id, Trial.status)
        ):
            if campaign_id is not None:
                out[campaign_id][status] = n
        return dict(out)

    return cache.get(("status-counts", tuple(sorted(campaign_ids))), compute, session)


def campaign_summary(campaign: Campaign, counts: dict[str, int]) -> s.CampaignSummary:
    trials, hours = spec_budget(campaign.spec)
    return s.CampaignSummary(
        id=campaign.id,
        name=campaign.name,
        kind=spec_kind(campaign.spec),
        status=campaign.status,
        created_at=campaign.created_at,
        started_at=campaign.started_at,
        finished_at=campaign.finished_at,
        kernels=spec_kernels(campaign.spec),
        token=spec_token(campaign.spec),
        budget_trials=trials,
        budget_hours=hours,
        done=counts.get(TrialStatus.DONE, 0),
        queued=counts.get(TrialStatus.QUEUED, 0),
        running=counts.get(TrialStatus.RUNNING, 0),
    )


def list_campaigns(
    session: Session,
    cache: TTLCache,
    *,
    status: str | None = None,
    kind: str | None = None,
    page: int = 1,
    per_page: int = PER_PAGE,
) -> s.CampaignList:
    """Campaigns, newest first, with their progress."""
    if not 1 <= page <= MAX_PAGE or not 1 <= per_page <= MAX_PER_PAGE:
        raise QueryError(f"page must be within 1..{MAX_PAGE} and per_page within 1..{MAX_PER_PAGE}")
    if not storable(status, kind):  # nothing stored could match
        return s.CampaignList(items=[], total=0, page=page, per_page=per_page, pages=1)
    where: list[ColumnElement[bool]] = []
    if status:
        where.append(Campaign.status == status)
    if kind:
        kind_of = Campaign.spec["kind"].as_string()
        where.append(kind_of == kind if kind != "fuzz" else or_(kind_of == kind, kind_of.is_(None)))
    total = int(session.scalar(select(func.count()).select_from(Campaign).where(*where)) or 0)
    campaigns = list(
        session.scalars(
            select(Campaign)
            .where(*where)
            .order_by(Campaign.created_at.desc(), Campaign.id.desc())
            .limit(per_page)
            .offset((page - 1) * per_page)
        )
    )
    counts = status_counts(session, cache, [c.id for c in campaigns])
    return s.CampaignList(
        items=[campaign_summary(c, counts.get(c.id, {})) for c in campaigns],
        total=total,
        page=page,
        per_page=per_page,
        pages=page_count(total, per_page),
    )


def allowed_actions(status: str) -> list[str]:
    """The buttons a campaign gets: what farm.control.campaigns' state machine allows from here."""
    allowed = TRANSITIONS.get(status, frozenset())
    out = []
    for action, target in ACTIONS.items():
        if target not in allowed:
            continue
        if action == "start" and status != "created":
            continue
        if action == "resume" and status != "paused":
            continue
        out.append(action)
    return out


def campaign_detail(session: Session, cache: TTLCache, name: str) -> s.CampaignDetail | None:
    """A campaign with its progress, verdicts over time, anomaly and window rate per knob
    and what may stall it (kernels no live worker serves)."""
    if not storable(name):
        return None
    campaign = session.scalars(select(Campaign).where(Campaign.name == name)).one_or_none()
    if campaign is None:
        return None
    cid = campaign.id
    counts = status_counts(session, cache, [cid]).get(cid, {})
    summary = campaign_summary(campaign, counts)
    unserved = unserved_kernels(session, campaign.status, summary.kernels)
    rates, sample, window = cache.get(
        ("campaign-params", cid), partial(stats.campaign_params, cid), session
    )
    verdicts = dict(
        cache.get(("campaign-verdicts", cid), partial(stats.campaign_verdicts, cid), session)
    )
    return s.CampaignDetail(
        **summary.model_dump(),
        spec=campaign.spec or {},
        infra_errors=verdicts.pop("infra-error", 0),  # the farm's trouble, apart
        verdicts=verdicts,
        series=cache.get(("campaign-series", cid), partial(stats.campaign_series, cid), session),
        param_rates=rates,
        param_sample=sample,
        param_window_entries=window,
        findings=_campaign_findings(session, cid),
        actions=allowed_actions(campaign.status),
        stats_max_age_s=cache.ttl,
        stats_as_of=cache.computed_at(("campaign-verdicts", cid)),
        unserved_kernels=list(unserved),
        warnings=list(unserved.values()),
    )


def _campaign_findings(session: Session, cid: int) -> list[s.CampaignFinding]:
    rows = session.execute(
        select(Finding.id, Finding.kind, Finding.title, func.sum(FindingCount.count))
        .join(Finding, Finding.id == FindingCount.finding_id)
        .where(FindingCount.campaign_id == cid)
        .group_by(Finding.id, Finding.kind, Finding.title)
        .order_by(func.sum(FindingCount.count).desc(), Finding.id)
        .limit(100)
    ).all()
    return [s.CampaignFinding(id=i, kind=k, title=t, count=int(n)) for i, k, t, n in rows]
