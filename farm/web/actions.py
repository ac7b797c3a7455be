"""The web's mutations, shared by the HTML forms and the JSON API.

Both go through farm.control.campaigns (``act`` and ``create_reproduction``) so the web
obeys the same state machine and spec validation as ``farm campaign ...`` and
``farm reproduce``; this module only maps their errors to HTTP statuses.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from farm.control import campaigns
from farm.params import SeedToken, TokenError
from farm.store.models import Campaign, Finding, FindingCount, Kernel, Trial
from farm.web import schemas as s
from farm.web.cache import TTLCache
from farm.web.queries import campaign_summary, status_counts
from farm.web.queries.common import storable

MAX_RUNS = 100


class ActionError(Exception):
    """A mutation that cannot be done; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _summary(session: Session, cache: TTLCache, campaign: Campaign) -> s.CampaignSummary:
    session.flush()
    counts = status_counts(session, TTLCache(0), [campaign.id]).get(campaign.id, {})
    cache.clear()  # the next page load must show the change
    return campaign_summary(campaign, counts)


def campaign_action(
    sessions: sessionmaker[Session], cache: TTLCache, name: str, action: str
) -> s.CampaignSummary:
    """Start, pause, resume or stop a campaign through farm.control.campaigns.act."""
    if action not in campaigns.ACTIONS:
        raise ActionError(
            400, f"unknown action {action!r}; use one of {', '.join(campaigns.ACTIONS)}"
        )
    with sessions.begin() as session:
        if (
            not storable(name)
            or session.scalar(select(Campaign.id).where(Campaign.name == name)) is None
        ):
            raise ActionError(404, f"no campaign called {name!r}")
        try:
            campaign = campaigns.act(session, name, action)
        except campaigns.CampaignError as exc:
            raise ActionError(409, str(exc)) from exc
        return _summary(session, cache, campaign)


def _default_kernels(session: Session, finding_id: int) -> list[str]:
    """Kernels the finding was seen on that the farm can boot (have an image)."""
    return list(
        session.scalars(
            select(Kernel.name)
            .join(FindingCount, FindingCount.kernel_id == Kernel.id)
            .where(FindingCount.finding_id == finding_id, Kernel.image_path.is_not(None))
            .group_by(Kernel.name)
            .order_by(Kernel.name)
        )
    )


def reproduce(
    sessions: sessionmaker[Session],
    cache: TTLCache,
    *,
    token: str | None = None,
    finding_id: int | None = None,
    kernels: Sequence[str] | None = None,
    runs: int = 10,
) -> s.CampaignSummary:
    """Queue a reproduction campaign for a seed (or a finding's best seed)."""
    if not 1 <= runs <= MAX_RUNS:
        raise ActionError(400, f"runs must be within 1..{MAX_RUNS}, not {runs}")
    with sessions.begin() as session:
        if token is None:
            if finding_id is None:
                raise ActionError(400, "give token (a seed token) or finding_id")
            finding = session.get(Finding, finding_id)
            if finding is None:
                raise ActionError(404, f"no finding {finding_id}")
            token = session.scalar(select(Trial.token).where(Trial.id == finding.example_trial_id))
            if token is None:
                raise ActionError(
                    409, f"finding {finding_id} has no example trial to take a seed from"
                )
        try:
            parsed = SeedToken.parse(token)
        except TokenError as exc:  # SeedToken.parse raises nothing else, "~pages=--5" included
            raise ActionError(400, str(exc)) from exc
        chosen = [k for k in (kernels or []) if k]
        if not storable(*chosen):
            raise ActionError(
                400, "kernel names are printable text: `farm kernels list` names them"
            )
        if not chosen and finding_id is not None:
            chosen = _default_kernels(session, finding_id)
        if not chosen:
            raise ActionError(400, "choose at least one kernel to reproduce on")
        try:
            campaign = campaigns.create_reproduction(session, str(parsed), chosen, runs)
        except campaigns.CampaignError as exc:
            if not str(exc).startswith("name:"):
                raise ActionError(400, str(exc)) from exc
            # the same seed twice in one second: the default name collides; add a suffix
            stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
            name = f"repro-{parsed.seed:016x}-{stamp}-{secrets.token_hex(2)}"
            campaign = campaigns.create_reproduction(session, str(parsed), chosen, runs, name=name)
        try:
            return _summary(session, cache, campaign)
        except IntegrityError as exc:  # a concurrent request took the name first
            raise ActionError(
                409, "another reproduction was queued at the same moment; retry"
            ) from exc
