"""Every read the results database makes, shaped for millions of trials.

Rules the queries follow, because the trials table is the one that grows:

- Lists of trials are keyset-paginated on ``(finished_at, id)`` and filtered on
  a column that leads one of the trial indexes (campaign, verdict, kernel,
  finding, token), so a page costs one short index range scan; nothing counts
  all trials to draw page numbers.
- Aggregates over trials (a campaign's verdicts, trials per hour, trials per
  kernel) are read through the app's TTLCache and the pages say how old they
  may be. The total on the overview is PostgreSQL's planner estimate
  (``pg_class.reltuples``); SQLite, the single-host backend, counts.
- Parameter plots are drawn from a campaign's latest ``PARAM_SAMPLE`` trials,
  not all of them, and say so.
- Findings, finding counts, campaigns and kernels are small tables: they are
  counted and sorted freely.

Reproducibility of a finding (syzkaller's repro, ClusterFuzz's reliability):
the runs of the finding's best seed (its example trial's token) in campaigns
with ``kind = "reproduce"``; a run *hits* when its trial landed in the finding.
Runs that tested nothing (``invalid``, ``infra-error``) are not counted.
"""

from __future__ import annotations

import math
import shlex
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from itertools import pairwise
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Integer,
    and_,
    case,
    cast,
    distinct,
    func,
    inspect,
    literal,
    or_,
    select,
    text,
    union_all,
)
from sqlalchemy.orm import Session

from farm.control.campaigns import ACTIONS, TRANSITIONS
from farm.params import KNOBS, PLACEMENTS, PUNCH_METHODS
from farm.store import models
from farm.store.models import Campaign, Finding, FindingCount, Kernel, Trial
from farm.triage.verdict import FINDING_KINDS, KINDS
from farm.web import schemas as s
from farm.web.cache import TTLCache
from farm.web.text import excerpt, first_line, stored_console

PER_PAGE = 50
MAX_PER_PAGE = 500
PARAM_SAMPLE = 10_000  # latest trials of a campaign the parameter plots are drawn from
ALIVE_AFTER = timedelta(minutes=5)  # a worker heard from more recently counts as alive
UNTESTED = frozenset({"invalid", "infra-error"})  # verdicts of trials that tested nothing
LOG_KNOBS = frozenset({"pages", "batch"})  # drawn log-uniformly (farm.params): geometric bins
# every knob but the program's own RNG seed (a rate against it is noise)
PLOTTED = tuple(name for name in KNOBS if name != "rng_seed")
MAX_SERIES_BUCKETS = 48
_BUCKET_WIDTHS = (60, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 604800)
_CATEGORIES = {"punch": PUNCH_METHODS, "placement": PLACEMENTS}

FINDING_SORTS: dict[str, Any] = {
    "title": Finding.title,
    "kind": Finding.kind,
    "count": Finding.trial_count,
    "first": Finding.first_seen,
    "last": Finding.last_seen,
    "id": Finding.id,
}
FINDING_STATUS_FILTERS = ("open", "fixed", "invalid", "gone", "all")
TRIAL_STATUS_FILTERS = ("done", "queued", "running")


class QueryError(ValueError):
    """A request parameter the queries cannot use (bad cursor, sort, ...); shown as a 400."""


# --- small helpers ----------------------------------------------------------


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def _now() -> datetime:
    return datetime.now(UTC)


def _epoch_bucket(session: Session, column: Any, width: int) -> ColumnElement[int]:
    """floor(epoch seconds / width) of a timestamp column, on either backend."""
    if _dialect(session) == "postgresql":
        seconds = cast(func.floor(func.extract("epoch", column)), BigInteger)
    else:  # SQLite keeps UTC as text; strftime('%s') reads it
        seconds = cast(func.strftime("%s", column), Integer)
    return seconds // width  # integer division on both


def _from_bucket(bucket: int, width: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=bucket * width)


def _spec_kind(spec: dict[str, Any] | None) -> str:
    kind = (spec or {}).get("kind", "fuzz")
    return kind if isinstance(kind, str) else "fuzz"


def _budget(spec: dict[str, Any] | None) -> tuple[int | None, float | None]:
    budget = (spec or {}).get("budget")
    if not isinstance(budget, dict):
        return None, None
    trials, hours = budget.get("trials"), budget.get("hours")
    return (
        trials if isinstance(trials, int) and not isinstance(trials, bool) else None,
        float(hours) if isinstance(hours, int | float) and not isinstance(hours, bool) else None,
    )


def _spec_kernels(spec: dict[str, Any] | None) -> list[str]:
    kernels = (spec or {}).get("kernels")
    return [k for k in kernels if isinstance(k, str)] if isinstance(kernels, list) else []


def _spec_token(spec: dict[str, Any] | None) -> str | None:
    token = (spec or {}).get("token")
    return token if isinstance(token, str) else None


def _pages(total: int, per_page: int) -> int:
    return max(1, math.ceil(total / per_page))


def reproduce_command(token: str, kernel: str) -> str:
    """The command line that reruns a trial (quoted: tokens carry ``~`` and ``=``)."""
    return f"farm reproduce {shlex.quote(token)} --kernel {shlex.quote(kernel)}"


# --- reproducibility --------------------------------------------------------


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
        if self.status in ("stopped", "done") or self.budget is None:
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
        token = _spec_token(row.spec)
        if token is None:
            continue
        by_id[row.id] = _ReproCampaign(
            row.name, row.status, token, _spec_kernels(row.spec), _budget(row.spec)[0], hits={}
        )
    if by_id:  # ix_trials_campaign_status narrows it; reproduce campaigns are small
        counted = session.execute(
            select(Trial.campaign_id, Trial.finding_id, Trial.verdict, func.count())
            .where(Trial.campaign_id.in_(list(by_id)), Trial.status == "done")
            .group_by(Trial.campaign_id, Trial.finding_id, Trial.verdict)
        ).all()
        for campaign_id, finding_id, verdict, n in counted:
            if campaign_id is None:
                continue
            campaign = by_id[campaign_id]
            campaign.done += n
            if verdict in UNTESTED:
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


# --- findings ---------------------------------------------------------------


@dataclass(frozen=True)
class FindingQuery:
    """The findings table's filters and order, as query parameters spell them."""

    status: str = "open"
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
        if self.page < 1 or not 1 <= self.per_page <= MAX_PER_PAGE:
            raise QueryError(f"page must be >= 1 and per_page within 1..{MAX_PER_PAGE}")
        return self


def _like_pattern(text_: str) -> str:
    escaped = text_.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def list_findings(session: Session, query: FindingQuery) -> s.FindingList:
    """One page of the findings table (syzbot's bug list)."""
    query = query.checked()
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
    items = _finding_summaries(session, [(f, token) for f, token in rows])
    return s.FindingList(
        items=items,
        total=total,
        page=query.page,
        per_page=query.per_page,
        pages=_pages(total, query.per_page),
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


def _finding_summaries(
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
    finding = session.get(Finding, finding_id)
    if finding is None:
        return None
    example = trial_detail(session, finding.example_trial_id) if finding.example_trial_id else None
    token = example.token if example else None
    [summary] = _finding_summaries(session, [(finding, token)])
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


# --- trials -----------------------------------------------------------------


@dataclass(frozen=True)
class TrialFilter:
    """Filters of the trials list; each narrows on a column that leads a trial index."""

    campaign: str | None = None
    kernel: str | None = None
    verdict: str | None = None
    finding: int | None = None
    token: str | None = None
    status: str = "done"

    def as_params(self) -> dict[str, str]:
        """The filters as query parameters (for links to the next page)."""
        out = {
            "campaign": self.campaign,
            "kernel": self.kernel,
            "verdict": self.verdict,
            "finding": None if self.finding is None else str(self.finding),
            "token": self.token,
            "status": None if self.status == "done" else self.status,
        }
        return {k: v for k, v in out.items() if v}


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _encode_cursor(finished_at: datetime | None, pk: int) -> str:
    if finished_at is None:
        return f"i{pk}"
    micros = (finished_at - _EPOCH) // timedelta(microseconds=1)
    return f"{micros}_{pk}"


def _decode_cursor(cursor: str) -> tuple[datetime | None, int]:
    try:
        if cursor.startswith("i"):
            return None, int(cursor[1:])
        micros, pk = cursor.split("_", 1)
        return _EPOCH + timedelta(microseconds=int(micros)), int(pk)
    except (ValueError, OverflowError):
        raise QueryError(
            f"malformed cursor {cursor[:40]!r}: use the next_cursor a page gave"
        ) from None


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
    if filt.status == "done":
        stmt = stmt.where(Trial.finished_at.is_not(None))
        if after is not None:
            at, pk = after
            if at is None:
                raise QueryError("this cursor belongs to a list of queued or running trials")
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
        next_cursor = _encode_cursor(last.finished_at if filt.status == "done" else None, last.id)
    return s.TrialList(items=items, next_cursor=next_cursor)


_ORACLE_FIELDS = tuple(s.Oracles.model_fields)


def trial_detail(session: Session, pk: int) -> s.TrialDetail | None:
    """One trial with everything a triager needs to rerun and judge it."""
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
        console=console,
        console_kept=bool(console) or trial.status != "done",
    )


# --- campaigns --------------------------------------------------------------


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
    trials, hours = _budget(campaign.spec)
    return s.CampaignSummary(
        id=campaign.id,
        name=campaign.name,
        kind=_spec_kind(campaign.spec),
        status=campaign.status,
        created_at=campaign.created_at,
        started_at=campaign.started_at,
        finished_at=campaign.finished_at,
        kernels=_spec_kernels(campaign.spec),
        token=_spec_token(campaign.spec),
        budget_trials=trials,
        budget_hours=hours,
        done=counts.get("done", 0),
        queued=counts.get("queued", 0),
        running=counts.get("running", 0),
    )


_CAMPAIGN_FIELDS = (
    Campaign.id,
    Campaign.name,
    Campaign.spec,
    Campaign.status,
    Campaign.created_at,
    Campaign.started_at,
    Campaign.finished_at,
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
    if page < 1 or not 1 <= per_page <= MAX_PER_PAGE:
        raise QueryError(f"page must be >= 1 and per_page within 1..{MAX_PER_PAGE}")
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
        pages=_pages(total, per_page),
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


def _bucket_width(span_s: float) -> int:
    for width in _BUCKET_WIDTHS:
        if span_s / width < MAX_SERIES_BUCKETS:
            return width
    return math.ceil(span_s / MAX_SERIES_BUCKETS)


def _series(
    session: Session,
    where: Sequence[ColumnElement[bool]],
    first: datetime,
    last: datetime,
    width: int | None = None,
) -> s.Series:
    """Done trials per time bucket and verdict between ``first`` and ``last``."""
    width = width or _bucket_width((last - first).total_seconds())
    lo = math.floor((first - _EPOCH).total_seconds() / width)
    hi = math.floor((last - _EPOCH).total_seconds() / width)
    bucket = _epoch_bucket(session, Trial.finished_at, width).label("bucket")
    rows = session.execute(
        select(bucket, Trial.verdict, func.count())
        .where(*where, Trial.finished_at >= _from_bucket(lo, width))
        .group_by(bucket, Trial.verdict)
    ).all()
    counts: dict[str, list[int]] = {}
    n = hi - lo + 1
    for b, verdict, c in rows:
        i = int(b) - lo
        if 0 <= i < n:
            counts.setdefault(verdict or "none", [0] * n)[i] += c
    ordered = dict(sorted(counts.items(), key=lambda kv: _verdict_order(kv[0])))
    return s.Series(
        bucket_seconds=width,
        starts=[_from_bucket(lo + i, width) for i in range(n)],
        counts=ordered,
    )


_VERDICT_ORDER = (
    "clean",
    "invalid",
    "infra-error",
    "counter-mismatch",
    "smaps-mismatch",
    "kernel-report",
    "hang",
    "guest-crash",
)


def _verdict_order(verdict: str) -> tuple[int, str]:
    try:
        return _VERDICT_ORDER.index(verdict), verdict
    except ValueError:
        return len(_VERDICT_ORDER), verdict


def _int_bins(values: list[int], log: bool, count: int = 10) -> list[tuple[int, int]]:
    """Inclusive integer ranges covering ``values``: geometric for log-drawn knobs."""
    lo, hi = min(values), max(values)
    if log and lo > 0:
        ratio = (hi + 1) / lo
        edges = sorted({round(lo * ratio ** (i / count)) for i in range(count + 1)})
    else:
        edges = sorted({lo + round((hi + 1 - lo) * i / count) for i in range(count + 1)})
    edges[-1] = hi + 1
    return [(a, b - 1) for a, b in pairwise(edges) if b > a]


Tally = tuple[str, Any, int, int]  # (knob, value, tested trials, anomalous trials)


def tally(rows: Iterable[tuple[str | None, dict[str, Any] | None]]) -> list[Tally]:
    """Tallies from (verdict, params) pairs: what _campaign_params has SQL count."""
    counts: dict[tuple[str, Any], list[int]] = defaultdict(lambda: [0, 0])
    for verdict, params in rows:
        if not params or not (verdict == "clean" or verdict in FINDING_KINDS):
            continue
        for name in PLOTTED:
            if name in params:
                t = counts[(name, params[name])]
                t[0] += 1
                t[1] += verdict in FINDING_KINDS
    return [(name, value, n, hits) for (name, value), (n, hits) in counts.items()]


def _as_int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    return None


def param_rates(tallies: Iterable[Tally]) -> list[s.ParamRates]:
    """Anomaly rate against each knob, from per-value tallies of tested trials.

    Only trials that tested something count (clean or a finding kind). Knobs
    with a dozen values or fewer get one bin per value; wider ones ten bins,
    geometric for the knobs farm.params draws log-uniformly.
    """
    by_knob: dict[str, list[tuple[Any, int, int]]] = defaultdict(list)
    for name, value, n, hits in tallies:
        if value is not None:
            by_knob[name].append((value, n, hits))
    out = []
    for name in PLOTTED:
        values = by_knob.get(name)
        if not values:
            continue
        help_ = KNOBS[name].help
        if len(values) == 1:
            out.append(s.ParamRates(name=name, help=help_, bins=[], fixed=str(values[0][0])))
            continue
        ints = [(_as_int(v), n, h) for v, n, h in values]
        bins: list[s.ParamBin] = []
        if name not in _CATEGORIES and all(i is not None for i, _, _ in ints):
            numeric = sorted((int(i), n, h) for i, n, h in ints if i is not None)
            distinct_values = [v for v, _, _ in numeric]
            if len(distinct_values) <= 12:
                ranges = [(v, v) for v in distinct_values]
            else:
                ranges = _int_bins(distinct_values, name in LOG_KNOBS)
            counts = [[0, 0] for _ in ranges]
            starts = [a for a, _ in ranges]
            for value, n, hits in numeric:
                i = bisect_right(starts, value) - 1
                counts[i][0] += n
                counts[i][1] += hits
            for (a, b), (n, hits) in zip(ranges, counts, strict=True):
                label = str(a) if a == b else f"{a}–{b}"
                bins.append(s.ParamBin(label=label, trials=n, anomalies=hits))
        else:
            known = _CATEGORIES.get(name, ())
            merged: dict[str, list[int]] = defaultdict(lambda: [0, 0])
            for value, n, hits in values:
                merged[str(value)][0] += n
                merged[str(value)][1] += hits
            order = [v for v in known if v in merged] + sorted(v for v in merged if v not in known)
            bins = [s.ParamBin(label=v, trials=merged[v][0], anomalies=merged[v][1]) for v in order]
        out.append(s.ParamRates(name=name, help=help_, bins=bins))
    return out


def campaign_detail(session: Session, cache: TTLCache, name: str) -> s.CampaignDetail | None:
    """A campaign with its progress, verdicts over time and anomaly rate per knob."""
    campaign = session.scalars(select(Campaign).where(Campaign.name == name)).one_or_none()
    if campaign is None:
        return None
    cid = campaign.id
    counts = status_counts(session, cache, [cid]).get(cid, {})
    summary = campaign_summary(campaign, counts)
    rates, sample = cache.get(("campaign-params", cid), partial(_campaign_params, cid), session)
    return s.CampaignDetail(
        **summary.model_dump(),
        spec=campaign.spec or {},
        verdicts=cache.get(("campaign-verdicts", cid), partial(_campaign_verdicts, cid), session),
        series=cache.get(("campaign-series", cid), partial(_campaign_series, cid), session),
        param_rates=rates,
        param_sample=sample,
        findings=_campaign_findings(session, cid),
        actions=allowed_actions(campaign.status),
        stats_max_age_s=cache.ttl,
        stats_as_of=cache.computed_at(("campaign-verdicts", cid)),
    )


def _campaign_verdicts(cid: int, session: Session) -> dict[str, int]:
    """Done trials per verdict (index-only on ix_trials_campaign_verdict_finished)."""
    rows = session.execute(
        select(Trial.verdict, func.count())
        .where(Trial.campaign_id == cid, Trial.finished_at.is_not(None))
        .group_by(Trial.verdict)
    ).all()
    return dict(sorted(((v or "none", n) for v, n in rows), key=lambda kv: _verdict_order(kv[0])))


def _campaign_series(cid: int, session: Session) -> s.Series:
    """Verdicts over the campaign's life, in at most MAX_SERIES_BUCKETS buckets."""
    first, last = session.execute(
        select(func.min(Trial.finished_at), func.max(Trial.finished_at)).where(
            Trial.campaign_id == cid
        )
    ).one()
    if first is None or last is None:
        return s.Series(bucket_seconds=3600, starts=[], counts={})
    return _series(session, [Trial.campaign_id == cid], first, last)


def _campaign_params(cid: int, session: Session) -> tuple[list[s.ParamRates], int]:
    """Anomaly rate per knob over the latest PARAM_SAMPLE tested trials (and how many).

    The database does the counting (one GROUP BY per knob over the sample), so
    Python sees a few thousand (knob, value) tallies instead of every trial's
    parameters as JSON.
    """
    tested = ("clean", *sorted(FINDING_KINDS))
    sample = (
        select(
            Trial.params.label("params"),
            case((Trial.verdict.in_(sorted(FINDING_KINDS)), 1), else_=0).label("hit"),
        )
        .where(
            Trial.campaign_id == cid,
            Trial.verdict.in_(tested),
            Trial.finished_at.is_not(None),
            Trial.params.is_not(None),
        )
        .order_by(Trial.finished_at.desc())
        .limit(PARAM_SAMPLE)
        .cte("sample")
    )
    size = select(func.count()).select_from(sample)
    per_knob = []
    for name in PLOTTED:
        # one expression object in SELECT and GROUP BY: PostgreSQL must see the same bind
        value = sample.c.params[name].as_string()
        per_knob.append(
            select(
                literal(name).label("knob"), value, func.count(), func.sum(sample.c.hit)
            ).group_by(value)
        )
    rows = session.connection().execute(union_all(*per_knob)).all()
    n = int(session.connection().execute(size).scalar() or 0)
    return param_rates((k, v, int(c), int(h or 0)) for k, v, c, h in rows), n


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


# --- kernels, workers, overview ----------------------------------------------


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
            trials=counts.get(k.id, 0),
            findings=findings.get(k.id, 0),
            last_trial=last[k.id],
        )
        for k in kernels
    ]


def _worker_model() -> Any | None:
    """farm.store.models.Worker if this version of the farm has it (the scheduler's heartbeats)."""
    return getattr(models, "Worker", None)


def _has_table(session: Session, cache: TTLCache, name: str) -> bool:
    return cache.get(
        ("has-table", name), lambda db: inspect(db.get_bind()).has_table(name), session
    )


def _workers_from_results(session: Session) -> dict[str, tuple[int, datetime | None]]:
    """Trials and last finish per worker name over the last 24 hours."""
    rows = session.execute(
        select(Trial.worker, func.count(), func.max(Trial.finished_at))
        .where(Trial.finished_at >= _now() - timedelta(hours=24), Trial.worker.is_not(None))
        .group_by(Trial.worker)
    ).all()
    return {w: (n, last) for w, n, last in rows if w is not None}


def workers(session: Session, cache: TTLCache) -> s.Workers:
    """Workers from the scheduler's table if it exists, else as seen in recent results."""
    now = _now()
    alive_after = now - ALIVE_AFTER
    since = now - timedelta(hours=24)

    seen = cache.get(("workers-24h",), _workers_from_results, session)
    worker_model = _worker_model()
    if worker_model is not None and _has_table(session, cache, worker_model.__tablename__):
        rows = session.scalars(
            select(worker_model).order_by(worker_model.last_seen.desc()).limit(1000)
        ).all()
        items = [
            s.WorkerInfo(
                name=w.name,
                alive=w.last_seen is not None and w.last_seen >= alive_after,
                last_seen=w.last_seen,
                first_seen=getattr(w, "first_seen", None),
                info=getattr(w, "info", None),
                trials_24h=seen.get(w.name, (0, None))[0],
            )
            for w in rows
        ]
        return s.Workers(source="workers-table", alive_after=alive_after, items=items)
    items = [
        s.WorkerInfo(
            name=name,
            alive=last is not None and last >= alive_after,
            last_seen=last,
            trials_24h=n,
        )
        for name, (n, last) in sorted(seen.items(), key=lambda kv: kv[1][1] or since, reverse=True)
    ]
    return s.Workers(source="results", alive_after=alive_after, items=items)


def trials_total(session: Session, cache: TTLCache) -> tuple[int, bool]:
    """(number of trials, exact?): PostgreSQL's estimate, else a (cached) count."""

    def compute(db: Session) -> tuple[int, bool]:
        if _dialect(db) == "postgresql":
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
    now = _now()
    where = [Trial.verdict.in_(KINDS), Trial.finished_at.is_not(None)]
    return _series(session, where, now - timedelta(hours=23), now, width=3600)


def overview(session: Session, cache: TTLCache) -> s.Overview:
    """The front page: active campaigns, trials per hour, open findings, workers."""
    total, exact = trials_total(session, cache)
    findings_open = int(
        session.scalar(select(func.count()).select_from(Finding).where(Finding.status == "open"))
        or 0
    )
    active = list(
        session.scalars(
            select(Campaign)
            .where(Campaign.status.in_(("created", "running", "paused")))
            .order_by(Campaign.created_at.desc(), Campaign.id.desc())
            .limit(20)
        )
    )
    counts = status_counts(session, cache, [c.id for c in active])
    hourly = cache.get(("hourly",), _hourly, session)
    recent = session.execute(
        select(Finding, Trial.token)
        .outerjoin(Trial, Trial.id == Finding.example_trial_id)
        .where(Finding.status == "open")
        .order_by(Finding.last_seen.desc(), Finding.id.desc())
        .limit(10)
    ).all()
    return s.Overview(
        trials_total=total,
        trials_total_exact=exact,
        findings_open=findings_open,
        campaigns=[campaign_summary(c, counts.get(c.id, {})) for c in active],
        hourly=hourly,
        recent_findings=_finding_summaries(session, [(f, t) for f, t in recent]),
        workers=workers(session, cache),
    )
