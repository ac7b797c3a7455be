"""The JSON API under /api: the pages' data for scripts and CI, documented at /openapi.json.

Reads are open. Mutations need ``Authorization: Bearer <FARM_WEB_TOKEN>``.
Lists of trials page with an opaque ``cursor`` (keyset), lists of findings and
campaigns with ``page``/``per_page``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from farm.control.campaigns import CampaignKind
from farm.store.models import CampaignStatus, TrialStatus
from farm.web import actions, auth, queries
from farm.web import schemas as s
from farm.web.deps import Cursor, FindingFilter, FindingId, Limit, PageNo, TrialId, session, state

UNAVAILABLE = {
    503: {
        "model": s.Problem,
        "description": "the results database is unreachable or not migrated (`farm db upgrade`)",
    }
}
router = APIRouter(tags=["results"], responses=UNAVAILABLE)
DB = Annotated[Session, Depends(session)]
bearer = HTTPBearer(auto_error=False, description="the server's FARM_WEB_TOKEN")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
ERRORS: dict[int | str, dict[str, object]] = {
    400: {"model": s.Problem, "description": "a parameter the server cannot use"},
    404: {"model": s.Problem, "description": "no such object"},
}
MUTATION_ERRORS: dict[int | str, dict[str, object]] = {
    **ERRORS,
    401: {"model": s.Problem, "description": "missing or wrong bearer token"},
    403: {"model": s.Problem, "description": "mutations disabled: no FARM_WEB_TOKEN configured"},
    409: {"model": s.Problem, "description": "not allowed in the campaign's current state"},
}


@router.get("/overview", response_model=s.Overview)
def get_overview(request: Request, db: DB) -> s.Overview:
    """Active campaigns, trials per hour (last 24 h), open findings, workers."""
    return queries.front_page(db, state(request).cache)


@router.get("/findings", response_model=s.FindingList, responses=ERRORS)
def get_findings(
    db: DB,
    status: Literal["open", "fixed", "invalid", "gone", "all"] = "open",
    kind: str | None = None,
    kernel: str | None = None,
    q: Annotated[str | None, Query(description="substring of the title")] = None,
    sort: Literal["title", "kind", "count", "first", "last", "id"] = "last",
    order: Literal["asc", "desc"] = "desc",
    page: PageNo = 1,
    per_page: Limit = queries.PER_PAGE,
) -> s.FindingList:
    """The findings table: deduplicated bugs with counts, kernels and reproducibility."""
    query = queries.FindingQuery(
        status=status,
        kind=kind,
        kernel=kernel,
        q=q,
        sort=sort,
        order=order,
        page=page,
        per_page=per_page,
    )
    return queries.list_findings(db, query)


@router.get("/findings/{finding_id}", response_model=s.FindingDetail, responses=ERRORS)
def get_finding(db: DB, finding_id: FindingId) -> s.FindingDetail:
    """One finding: report, example console excerpt, counts per kernel and campaign."""
    finding = queries.finding_detail(db, finding_id)
    if finding is None:
        raise HTTPException(404, f"no finding {finding_id}")
    return finding


@router.get("/findings/{finding_id}/trials", response_model=s.TrialList, responses=ERRORS)
def get_finding_trials(
    db: DB, finding_id: FindingId, cursor: Cursor = None, limit: Limit = queries.PER_PAGE
) -> s.TrialList:
    """The trials behind a finding, newest first."""
    return queries.list_trials(db, queries.TrialFilter(finding=finding_id), cursor, limit)


@router.get("/trials", response_model=s.TrialList, responses=ERRORS)
def get_trials(
    db: DB,
    campaign: str | None = None,
    kernel: str | None = None,
    verdict: str | None = None,
    finding: FindingFilter = None,
    token: str | None = None,
    status: TrialStatus = TrialStatus.DONE,
    cursor: Cursor = None,
    limit: Limit = queries.PER_PAGE,
) -> s.TrialList:
    """Trials newest first; pass ``next_cursor`` back as ``cursor`` for older ones."""
    filt = queries.TrialFilter(
        campaign=campaign,
        kernel=kernel,
        verdict=verdict,
        finding=finding,
        token=token,
        status=status,
    )
    return queries.list_trials(db, filt, cursor, limit)


@router.get("/trials/{pk}", response_model=s.TrialDetail, responses=ERRORS)
def get_trial(db: DB, pk: TrialId) -> s.TrialDetail:
    """One trial: parameters, seed token, reproduce command, oracles, verdict, console."""
    trial = queries.trial_detail(db, pk)
    if trial is None:
        raise HTTPException(404, f"no trial {pk}")
    return trial


@router.get("/campaigns", response_model=s.CampaignList, responses=ERRORS)
def get_campaigns(
    request: Request,
    db: DB,
    status: CampaignStatus | None = None,
    kind: CampaignKind | None = None,
    page: PageNo = 1,
    per_page: Limit = queries.PER_PAGE,
) -> s.CampaignList:
    """Campaigns newest first, with progress against their budget."""
    return queries.list_campaigns(
        db, state(request).cache, status=status, kind=kind, page=page, per_page=per_page
    )


@router.get("/campaigns/{name}", response_model=s.CampaignDetail, responses=ERRORS)
def get_campaign(request: Request, db: DB, name: str) -> s.CampaignDetail:
    """A campaign: progress, verdict counts, verdicts over time, anomaly rate per knob."""
    campaign = queries.campaign_detail(db, state(request).cache, name)
    if campaign is None:
        raise HTTPException(404, f"no campaign called {name!r}")
    return campaign


@router.get("/evidence")
def get_evidence(db: DB, kernel: str | None = None) -> list[dict[str, Any]]:
    """Per kernel x scenario: trials, window entries, damage with tokens, 95 % bounds."""
    from farm.control.evidence import evidence
    from farm.web.queries.common import storable

    if kernel is not None and not storable(kernel):  # NUL etc. can name no kernel
        return []
    return [row.to_json() for row in evidence(db, [kernel] if kernel else [])]


@router.get("/kernels", response_model=list[s.KernelInfo])
def get_kernels(request: Request, db: DB) -> list[s.KernelInfo]:
    """Kernels with trial counts, findings seen and the last trial's time."""
    return queries.list_kernels(db, state(request).cache)


@router.get("/workers", response_model=s.Workers)
def get_workers(request: Request, db: DB) -> s.Workers:
    """Workers and whether they were heard from in the last few minutes."""
    return queries.list_workers(db, state(request).cache)


@router.post(
    "/campaigns/{name}/{action}",
    response_model=s.MutationResult,
    responses=MUTATION_ERRORS,
    tags=["actions"],
)
def post_campaign_action(
    request: Request,
    name: str,
    action: Literal["start", "pause", "resume", "stop"],
    credentials: Credentials,
) -> s.MutationResult:
    """Start, pause, resume or stop a campaign (farm.control.campaigns' state machine decides)."""
    web = state(request)
    auth.check(web.web_token, credentials.credentials if credentials else None)
    campaign = actions.campaign_action(web.sessions, web.cache, name, action)
    return s.MutationResult(
        message=f"campaign {campaign.name} is {campaign.status}", campaign=campaign
    )


@router.post(
    "/reproductions",
    response_model=s.MutationResult,
    status_code=201,
    responses=MUTATION_ERRORS,
    tags=["actions"],
)
def post_reproduction(
    request: Request, body: s.ReproductionRequest, credentials: Credentials
) -> s.MutationResult:
    """Queue a reproduction campaign: one seed, ``runs`` times on each kernel."""
    web = state(request)
    auth.check(web.web_token, credentials.credentials if credentials else None)
    campaign = actions.reproduce(
        web.sessions,
        web.cache,
        token=body.token,
        finding_id=body.finding_id,
        kernels=body.kernels,
        runs=body.runs,
    )
    return s.MutationResult(
        message=f"reproduction {campaign.name} queued ({campaign.budget_trials} runs)",
        campaign=campaign,
    )
