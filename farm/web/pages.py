"""HTML pages: the same queries as the API, rendered for people triaging findings.

Mutating forms POST here with a ``web_token`` field; on success they redirect
(303) to the page showing the result, so a reload never repeats an action.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from farm.control.campaigns import ACTIONS, CAMPAIGN_KINDS
from farm.control.liveness import ALIVE_AFTER
from farm.store.models import FindingStatus, Kernel, TrialStatus
from farm.triage.kinds import FINDING_KINDS, KINDS, severity
from farm.web import actions, auth, queries
from farm.web.deps import (
    Cursor,
    FindingFilter,
    FindingId,
    Limit,
    PageNo,
    TrialId,
    html,
    session,
    state,
)
from farm.web.report import render_text, report_from_detail
from farm.web.text import printable

router = APIRouter(include_in_schema=False)
DB = Annotated[Session, Depends(session)]

# what a redirect after a successful form says (keys only: nothing from the request is echoed)
DONE_MESSAGES = {
    "start": "Campaign started.",
    "pause": "Campaign paused.",
    "resume": "Campaign resumed.",
    "stop": "Campaign stopped.",
    "reproduce": "Reproduction queued: the scheduler runs it as soon as workers are free.",
}


def _kernel_names(db: Session) -> list[str]:
    return list(db.scalars(select(Kernel.name).order_by(Kernel.name)))


@router.get("/", response_class=HTMLResponse)
def overview_page(request: Request, db: DB) -> HTMLResponse:
    data = queries.front_page(db, state(request).cache)
    return html(
        request, "overview.html", {"nav": "overview", "o": data, "ttl": state(request).cache.ttl}
    )


@router.get("/findings", response_class=HTMLResponse)
def findings_page(
    request: Request,
    db: DB,
    status: str = FindingStatus.OPEN,
    kind: str | None = None,
    kernel: str | None = None,
    q: str | None = None,
    sort: str = "last",
    order: str = "desc",
    page: PageNo = 1,
) -> HTMLResponse:
    query = queries.FindingQuery(
        status=status,
        kind=kind or None,
        kernel=kernel or None,
        q=q or None,
        sort=sort,
        order=order,
        page=page,
    )
    data = queries.list_findings(db, query)
    return html(
        request,
        "findings.html",
        {
            "nav": "findings",
            "f": data,
            "fq": query,
            "kinds": sorted(FINDING_KINDS, key=severity),
            "kernels": _kernel_names(db),
            "statuses": queries.FINDING_STATUS_FILTERS,
        },
    )


@router.get("/findings/{finding_id}", response_class=HTMLResponse)
def finding_page(
    request: Request, db: DB, finding_id: FindingId, cursor: Cursor = None
) -> HTMLResponse:
    finding = queries.finding_detail(db, finding_id)
    if finding is None:
        raise HTTPException(404, f"no finding {finding_id}")
    trials = queries.list_trials(db, queries.TrialFilter(finding=finding_id), cursor, limit=25)
    seen_on = {k.kernel for k in finding.per_kernel}
    return html(
        request,
        "finding.html",
        {
            "nav": "findings",
            "f": finding,
            "report_text": render_text(report_from_detail(finding)),
            "trials": trials,
            "checked": [k for k in finding.kernels_available if k in seen_on]
            or finding.kernels_available[:1],
            "mutations": bool(state(request).web_token),
        },
    )


@router.post("/findings/{finding_id}/reproduce")
def reproduce_form(
    request: Request,
    finding_id: FindingId,
    web_token: Annotated[str, Form()] = "",
    kernels: Annotated[list[str] | None, Form()] = None,
    runs: Annotated[int, Form(ge=1, le=actions.MAX_RUNS)] = 10,
) -> RedirectResponse:
    web = state(request)
    auth.check(web.web_token, web_token)
    campaign = actions.reproduce(
        web.sessions, web.cache, finding_id=finding_id, kernels=kernels or [], runs=runs
    )
    return RedirectResponse(f"/campaigns/{_path(campaign.name)}?done=reproduce", status_code=303)


@router.get("/campaigns", response_class=HTMLResponse)
def campaigns_page(
    request: Request,
    db: DB,
    status: str | None = None,
    kind: str | None = None,
    page: PageNo = 1,
) -> HTMLResponse:
    data = queries.list_campaigns(
        db, state(request).cache, status=status or None, kind=kind or None, page=page
    )
    return html(request, "campaigns.html", {"nav": "campaigns", "c": data, "kinds": CAMPAIGN_KINDS})


@router.get("/campaigns/{name}", response_class=HTMLResponse)
def campaign_page(request: Request, db: DB, name: str, done: str | None = None) -> HTMLResponse:
    campaign = queries.campaign_detail(db, state(request).cache, name)
    if campaign is None:
        raise HTTPException(404, f"no campaign called {printable(name)!r}")
    latest = queries.list_trials(db, queries.TrialFilter(campaign=name), limit=20)
    return html(
        request,
        "campaign.html",
        {
            "nav": "campaigns",
            "c": campaign,
            "latest": latest,
            "done_message": DONE_MESSAGES.get(done or ""),
            "mutations": bool(state(request).web_token),
        },
    )


@router.post("/campaigns/{name}/action")
def campaign_form(
    request: Request,
    name: str,
    action: Annotated[str, Form()],
    web_token: Annotated[str, Form()] = "",
) -> RedirectResponse:
    web = state(request)
    auth.check(web.web_token, web_token)
    if action not in ACTIONS:
        raise actions.ActionError(400, f"unknown action; use one of {', '.join(ACTIONS)}")
    campaign = actions.campaign_action(web.sessions, web.cache, name, action)
    return RedirectResponse(f"/campaigns/{_path(campaign.name)}?done={action}", status_code=303)


@router.get("/trials", response_class=HTMLResponse)
def trials_page(
    request: Request,
    db: DB,
    campaign: str | None = None,
    kernel: str | None = None,
    verdict: str | None = None,
    finding: FindingFilter = None,
    token: str | None = None,
    status: str = TrialStatus.DONE,
    cursor: Cursor = None,
    limit: Limit = queries.PER_PAGE,
) -> HTMLResponse:
    filt = queries.TrialFilter(
        campaign=campaign or None,
        kernel=kernel or None,
        verdict=verdict or None,
        finding=finding,
        token=token or None,
        status=status,
    )
    data = queries.list_trials(db, filt, cursor, limit)
    return html(
        request,
        "trials.html",
        {
            "nav": "trials",
            "t": data,
            "filt": filt,
            "verdicts": KINDS,
            "kernels": _kernel_names(db),
            "statuses": queries.TRIAL_STATUS_FILTERS,
        },
    )


@router.get("/trials/{pk}", response_class=HTMLResponse)
def trial_page(request: Request, db: DB, pk: TrialId) -> HTMLResponse:
    trial = queries.trial_detail(db, pk)
    if trial is None:
        raise HTTPException(404, f"no trial {pk}")
    return html(request, "trial.html", {"nav": "trials", "t": trial})


@router.get("/kernels", response_class=HTMLResponse)
def kernels_page(request: Request, db: DB) -> HTMLResponse:
    data = queries.list_kernels(db, state(request).cache)
    return html(
        request,
        "kernels.html",
        {"nav": "kernels", "kernels": data, "ttl": state(request).cache.ttl},
    )


@router.get("/evidence", response_class=HTMLResponse)
def evidence_page(request: Request, db: DB, kernel: str | None = None) -> HTMLResponse:
    """The farm's answer per kernel x scenario: the page to link from a mailing-list reply."""
    from farm.control.evidence import evidence
    from farm.web.queries.common import storable

    rows = (
        []
        if kernel is not None and not storable(kernel)
        else evidence(db, [kernel] if kernel else [])
    )
    return html(request, "evidence.html", {"nav": "evidence", "rows": rows})


@router.get("/workers", response_class=HTMLResponse)
def workers_page(request: Request, db: DB) -> HTMLResponse:
    data = queries.list_workers(db, state(request).cache)
    return html(
        request,
        "workers.html",
        {"nav": "workers", "w": data, "alive_minutes": ALIVE_AFTER.total_seconds() / 60},
    )


@router.get("/healthz")
def healthz() -> dict[str, bool]:
    """For load balancers and the test server's readiness probe (no database access)."""
    return {"ok": True}


def _path(name: str) -> str:
    return quote(name, safe="")
