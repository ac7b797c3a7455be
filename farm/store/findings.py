"""Findings: one per signature (verdict kind + normalised title), like syzbot's bug list.

Why this shape:

- The signature is sha256 of the kind and the *normalised* title, so the same
  bug seen on many kernels, campaigns and boots is one row, and the key is a
  fixed-size string that survives any title length. The normaliser is the
  console parser's (farm.triage.titles), whose titles are its fixed points: a
  parser title keys its finding as it is.
- Counters are changed only by atomic upserts (``trial_count = trial_count + 1``
  inside ``INSERT ... ON CONFLICT DO UPDATE``): any number of recorder
  processes can attach trials of the same new signature at once and get one
  finding with an exact count. The recorder attaches only a result it newly
  stored, in the same transaction, so a redelivered result never counts twice.
- Verdicts are recomputable: ``rerun`` judges every stored result again (the
  console parser improves; old data should benefit) and rebuilds findings and
  counts from the trials. Finding ids stay stable for signatures that still
  exist, so links in bug reports keep working; a finding whose signature no
  longer has any trial is kept with ``trial_count = 0`` and status ``gone``
  (status ``fixed``/``invalid``, set by people, is kept as it is). A gone
  finding comes back to ``open`` when a trial has its signature again.
- Infra errors, invalid and clean trials never become findings
  (farm.triage.verdict.FINDING_KINDS decides).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    Table,
    bindparam,
    case,
    delete,
    func,
    insert,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.attributes import set_committed_value

from farm.protocol import ResultError, TrialResult, clip, validate_result
from farm.sanitize import clean_text
from farm.store.db import dialect_insert
from farm.store.models import MAX_TITLE_CHARS, Finding, FindingCount, Trial, TrialStatus, utcnow
from farm.store.storage import console_text
from farm.triage.titles import normalize_title
from farm.triage.verdict import FINDING_KINDS, Verdict, judge

MAX_REPORT_CHARS = 32 * 1024  # the example's report kept with its finding (head and tail)
MAX_DETAIL_CHARS = 4096  # a trial's verdict detail
RERUN_BATCH = 500  # trials per page in rerun: consoles are up to 256 KiB each
MAX_RERUN_ERRORS = 20  # error messages kept in a RerunSummary

_FINDINGS = cast(Table, Finding.__table__)
_COUNTS = cast(Table, FindingCount.__table__)
_TRIALS = cast(Table, Trial.__table__)

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
NO_TITLE = "(no title)"  # the key title of a title that normalises to nothing


# --- signatures -------------------------------------------------------------


def key_title(title: str) -> str:
    """The title as findings key it: the one title normaliser's (farm.triage.titles:
    addresses, numbers and spacing that differ between boots go; ASCII, no control
    characters, at most 120 bytes), never empty."""
    return normalize_title(title) or NO_TITLE


def signature(kind: str, title: str) -> str:
    """sha256 hex of kind and normalised title: the finding's unique key."""
    return hashlib.sha256(f"{kind}\n{key_title(title)}".encode()).hexdigest()


@dataclass(frozen=True)
class FindingKey:
    kind: str
    title: str  # normalised
    signature: str


def finding_key(kind: str, title: str | None) -> FindingKey | None:
    """The finding a verdict of this kind and title belongs to; None if it is not a finding.

    A finding kind without a title (only a hand-made Verdict) is keyed by its kind,
    so it is still counted rather than lost.
    """
    if kind not in FINDING_KINDS:
        return None
    normal = key_title(title or kind)
    return FindingKey(kind, normal, signature(kind, normal))


def trial_title(verdict: Verdict) -> str | None:
    """The title stored on the trial row (clean and bounded, not normalised)."""
    if verdict.title is None:
        return None
    return _CONTROL.sub(" ", clean_text(verdict.title)).strip()[:MAX_TITLE_CHARS] or None


def trial_detail(verdict: Verdict) -> str | None:
    """The detail stored on the trial row, clean and bounded."""
    if verdict.detail is None:
        return None
    return clip(clean_text(verdict.detail), MAX_DETAIL_CHARS)[0]


def report_text(verdict: Verdict) -> str | None:
    """What a finding shows of its example: the kernel report, else the oracle's detail."""
    raw = verdict.report.text if verdict.report is not None else verdict.detail
    if raw is None:
        return None
    return clip(clean_text(raw), MAX_REPORT_CHARS)[0]


# --- attaching one trial ----------------------------------------------------


def attach(session: Session, trial: Trial, verdict: Verdict, seen_at: datetime) -> int | None:
    """Count a newly recorded trial in its finding; returns the finding id (None: no finding).

    Call once per trial, in the transaction that records it (farm.store.recorder
    does): it sets trial.finding_id and trial.title and adds one to the
    finding's and the kernel/campaign counters.
    """
    if trial.finding_id is not None:
        raise ValueError(
            f"trial {trial.trial_id!r} is already counted in finding {trial.finding_id}"
        )
    session.flush()  # the trial needs its id
    finding_id = attach_row(
        session,
        trial_pk=trial.id,
        kernel_id=trial.kernel_id,
        campaign_id=trial.campaign_id,
        verdict=verdict,
        seen_at=seen_at,
    )
    if finding_id is not None:  # attach_row wrote these; keep the object in step without an UPDATE
        set_committed_value(trial, "finding_id", finding_id)
        set_committed_value(trial, "title", trial_title(verdict))
    return finding_id


def attach_row(
    session: Session,
    *,
    trial_pk: int,
    kernel_id: int,
    campaign_id: int | None,
    verdict: Verdict,
    seen_at: datetime,
) -> int | None:
    """attach() on a trial known by its columns (the recorder works on Core rows)."""
    key = finding_key(verdict.kind, verdict.title)
    if key is None:
        return None
    finding_id = _upsert_finding(session, key, trial_pk, seen_at, report_text(verdict))
    _upsert_count(session, finding_id, kernel_id, campaign_id, seen_at)
    session.execute(
        update(_TRIALS)
        .where(_TRIALS.c.id == trial_pk)
        .values(finding_id=finding_id, title=trial_title(verdict))
    )
    return finding_id


def _upsert_finding(
    session: Session, key: FindingKey, trial_pk: int, seen_at: datetime, report: str | None
) -> int:
    """One atomic statement: insert the finding, or add this trial to it.

    All SET expressions read the row as it was before the update. A finding
    with no trials (gone, or a rerun placeholder) starts over from this trial.
    """
    f = _FINDINGS.c
    stmt = dialect_insert(session, _FINDINGS).values(
        signature=key.signature,
        kind=key.kind,
        title=key.title,
        status="open",
        trial_count=1,
        first_seen=seen_at,
        last_seen=seen_at,
        example_trial_id=trial_pk,
        report=report,
        created_at=utcnow(),
    )
    new = stmt.excluded
    restart = f.trial_count == 0
    earlier = restart | (new.first_seen < f.first_seen)
    stmt = stmt.on_conflict_do_update(
        index_elements=[f.signature],
        set_={
            "trial_count": f.trial_count + 1,
            "first_seen": case((earlier, new.first_seen), else_=f.first_seen),
            "last_seen": case(
                (restart | (new.last_seen > f.last_seen), new.last_seen), else_=f.last_seen
            ),
            "example_trial_id": case((earlier, new.example_trial_id), else_=f.example_trial_id),
            "report": case((earlier, new.report), else_=f.report),
            "status": case((f.status == "gone", literal("open")), else_=f.status),
        },
    ).returning(f.id)
    return int(session.execute(stmt).scalar_one())


def _count_target(campaign_id: int | None) -> dict[str, Any]:
    """The partial unique index an upsert of finding_counts conflicts on."""
    c = _COUNTS.c
    if campaign_id is None:
        return {
            "index_elements": [c.finding_id, c.kernel_id],
            "index_where": c.campaign_id.is_(None),
        }
    return {
        "index_elements": [c.finding_id, c.kernel_id, c.campaign_id],
        "index_where": c.campaign_id.is_not(None),
    }


def _upsert_count(
    session: Session, finding_id: int, kernel_id: int, campaign_id: int | None, seen_at: datetime
) -> None:
    c = _COUNTS.c
    stmt = dialect_insert(session, _COUNTS).values(
        finding_id=finding_id,
        kernel_id=kernel_id,
        campaign_id=campaign_id,
        count=1,
        first_seen=seen_at,
        last_seen=seen_at,
    )
    new = stmt.excluded
    session.execute(
        stmt.on_conflict_do_update(
            **_count_target(campaign_id),
            set_={
                "count": c.count + 1,
                "first_seen": case(
                    (new.first_seen < c.first_seen, new.first_seen), else_=c.first_seen
                ),
                "last_seen": case((new.last_seen > c.last_seen, new.last_seen), else_=c.last_seen),
            },
        )
    )


# --- rerun ------------------------------------------------------------------


@dataclass
class RerunSummary:
    """What ``farm triage rerun`` did."""

    trials: int = 0  # done trials looked at
    rejudged: int = 0  # of those, judged again from their stored result and console
    changed: int = 0  # verdict kind or title differs from what was stored
    kept: int = 0  # stored result unreadable or judge() failed: stored verdict kept
    findings_before: int = 0  # findings with at least one trial, before
    findings_after: int = 0  # ... and after
    new_findings: int = 0  # signatures that had no live finding before
    gone_findings: int = 0  # findings left without trials (status "gone" if it was "open")
    errors: list[str] = field(default_factory=list)  # the first MAX_RERUN_ERRORS reasons

    def describe(self) -> str:
        """Lines for the CLI."""
        lines = [
            f"trials: {self.trials} done, {self.rejudged} rejudged, "
            f"{self.changed} verdicts changed, {self.kept} kept as stored",
            f"findings: {self.findings_before} before, {self.findings_after} after "
            f"({self.new_findings} new, {self.gone_findings} gone)",
        ]
        lines += [f"  kept: {e}" for e in self.errors]
        return "\n".join(lines)


@dataclass
class _Seen:
    """Running aggregate of one finding or one (finding, kernel, campaign) count."""

    count: int
    first: datetime
    last: datetime
    example: int = 0
    report: str | None = None

    def add(self, at: datetime, example: int = 0, report: str | None = None) -> None:
        self.count += 1
        if at < self.first:  # rows come in id order: ties keep the lowest id
            self.first, self.example, self.report = at, example, report
        self.last = max(self.last, at)


def rerun(
    session_factory: sessionmaker[Session],
    *,
    progress: Callable[[int, int], None] | None = None,
    batch_size: int = RERUN_BATCH,
) -> RerunSummary:
    """Judge every done trial again and rebuild all findings and counts, in one transaction.

    Each trial's TrialResult is rebuilt from its stored result JSON and console
    (the recorder keeps the console in its own column) and judged again; its
    verdict, title, detail and finding link are updated. Findings are rebuilt
    from scratch but keep their ids (see the module docstring). A trial whose
    stored result cannot be rebuilt, or that judge() fails on, keeps its stored
    verdict and stays counted under it; the summary says how many and why.

    Recording goes on meanwhile, but attaching to findings waits until the
    rebuild commits (PostgreSQL: the findings tables are locked EXCLUSIVE, which
    still lets readers in; SQLite: the rebuild holds the write lock, so a
    recorder waits up to the busy timeout). Trials are read in primary-key
    pages rather than from one long cursor, because the same transaction
    updates the rows it reads; memory stays bounded by the page size.
    ``progress(done, total)`` is called after each page.
    """
    with session_factory.begin() as session:
        _lock_findings(session)
        session.execute(delete(_COUNTS))
        rebuild = _Rebuild(session)
        total = _count_trials(session)
        last_pk = 0
        while True:
            rows = session.execute(
                select(*_RERUN_COLUMNS)
                .where(_TRIALS.c.status == TrialStatus.DONE, _TRIALS.c.id > last_pk)
                .order_by(_TRIALS.c.id)
                .limit(batch_size)
            ).all()
            if not rows:
                break
            changes = [change for row in rows if (change := rebuild.trial(row)) is not None]
            if changes:
                session.execute(_TRIAL_UPDATE, changes)
            last_pk = rows[-1].id
            if progress is not None:
                done = rebuild.summary.trials
                progress(done, max(total, done))
        return rebuild.finish()


_RERUN_COLUMNS = tuple(
    _TRIALS.c[name]
    for name in (
        "id",
        "kernel_id",
        "campaign_id",
        "verdict",
        "title",
        "verdict_detail",
        "finding_id",
        "result",
        "console",
        "console_z",
        "finished_at",
        "recorded_at",
        "created_at",
    )
)
# bind names differ from column names: SQLAlchemy reserves those for the SET clause
_TRIAL_PARAMS = ("b_pk", "b_verdict", "b_title", "b_detail", "b_finding")
_TRIAL_UPDATE = (
    update(_TRIALS)
    .where(_TRIALS.c.id == bindparam("b_pk"))
    .values(
        verdict=bindparam("b_verdict"),
        title=bindparam("b_title"),
        verdict_detail=bindparam("b_detail"),
        finding_id=bindparam("b_finding"),
    )
)


class _Rebuild:
    """rerun's state: finding ids by signature and the aggregates being rebuilt in memory.

    Memory grows with the number of findings and (finding, kernel, campaign)
    triples, never with the number of trials.
    """

    def __init__(self, session: Session) -> None:
        self.session = session
        self.summary = RerunSummary()
        f = _FINDINGS.c
        self.ids = {row.signature: row.id for row in session.execute(select(f.signature, f.id))}
        self.live_before = set(session.scalars(select(f.id).where(f.trial_count > 0)))
        self.summary.findings_before = len(self.live_before)
        self.findings: dict[int, _Seen] = {}
        self.counts: dict[tuple[int, int, int | None], _Seen] = {}

    def trial(self, row: Any) -> dict[str, Any] | None:
        """Judge one trial again and count it; the trial's UPDATE parameters if it changed."""
        self.summary.trials += 1
        verdict = _rejudge(row, self.summary)
        key = finding_key(verdict.kind, verdict.title)
        finding_id = None
        if key is not None:
            seen = row.finished_at or row.recorded_at or row.created_at  # as the recorder does
            finding_id = self.ids.get(key.signature)
            if finding_id is None:
                finding_id = _placeholder(self.session, key, row.id, seen)
                self.ids[key.signature] = finding_id
            report = report_text(verdict)
            if finding_id in self.findings:
                self.findings[finding_id].add(seen, row.id, report)
            else:
                self.findings[finding_id] = _Seen(1, seen, seen, row.id, report)
            where = (finding_id, row.kernel_id, row.campaign_id)
            if where in self.counts:
                self.counts[where].add(seen)
            else:
                self.counts[where] = _Seen(1, seen, seen)
        new = (verdict.kind, trial_title(verdict), trial_detail(verdict), finding_id)
        if (row.verdict, row.title) != new[:2]:
            self.summary.changed += 1
        if (row.verdict, row.title, row.verdict_detail, row.finding_id) == new:
            return None
        return dict(zip(_TRIAL_PARAMS, (row.id, *new), strict=True))

    def finish(self) -> RerunSummary:
        """Write the rebuilt findings and counts."""
        _store(self.session, self.findings, self.counts)
        live = self.findings.keys()
        self.summary.findings_after = len(live)
        self.summary.new_findings = len(live - self.live_before)
        self.summary.gone_findings = len(self.live_before - live)
        return self.summary


def _rejudge(row: Any, summary: RerunSummary) -> Verdict:
    """The trial's verdict from its stored result and console; the stored one if that fails."""
    stored = Verdict(row.verdict or "invalid", title=row.title, detail=row.verdict_detail)
    if row.result is None:
        return _keep(summary, stored, f"trial pk {row.id}: no stored result")
    try:
        result: TrialResult = validate_result(
            {**row.result, "console": console_text(row.console, row.console_z)}
        )
    except ResultError as exc:
        return _keep(summary, stored, f"trial pk {row.id}: stored result invalid: {exc}")
    try:
        verdict = judge(result)
    except Exception as exc:  # a parser bug must not stop a rebuild of millions of trials
        return _keep(
            summary, stored, f"trial pk {row.id}: judge failed: {type(exc).__name__}: {exc}"
        )
    summary.rejudged += 1
    return verdict


def _keep(summary: RerunSummary, stored: Verdict, why: str) -> Verdict:
    summary.kept += 1
    if len(summary.errors) < MAX_RERUN_ERRORS:
        summary.errors.append(why)
    return stored


def _lock_findings(session: Session) -> None:
    """Keep recorders from attaching while findings are rebuilt (see rerun)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("LOCK TABLE findings, finding_counts IN EXCLUSIVE MODE"))
    # SQLite: the DELETE that follows takes the database's write lock


def _count_trials(session: Session) -> int:
    stmt = select(func.count()).select_from(_TRIALS).where(_TRIALS.c.status == TrialStatus.DONE)
    return int(session.scalar(stmt) or 0)


def _placeholder(session: Session, key: FindingKey, trial_pk: int, seen: datetime) -> int:
    """A finding row for a signature first met during a rerun; _store fills it in."""
    stmt = (
        insert(_FINDINGS)
        .values(
            signature=key.signature,
            kind=key.kind,
            title=key.title,
            status="open",
            trial_count=0,
            first_seen=seen,
            last_seen=seen,
            example_trial_id=trial_pk,
            created_at=utcnow(),
        )
        .returning(_FINDINGS.c.id)
    )
    return int(session.execute(stmt).scalar_one())


def _store(
    session: Session,
    findings: dict[int, _Seen],
    counts: dict[tuple[int, int, int | None], _Seen],
) -> None:
    f = _FINDINGS.c
    session.execute(update(_FINDINGS).values(trial_count=0))
    if findings:
        session.execute(
            update(_FINDINGS)
            .where(f.id == bindparam("b_pk"))
            .values(
                trial_count=bindparam("b_count"),
                first_seen=bindparam("b_first"),
                last_seen=bindparam("b_last"),
                example_trial_id=bindparam("b_example"),
                report=bindparam("b_report"),
                status=case((f.status == "gone", literal("open")), else_=f.status),
            ),
            [
                {
                    "b_pk": pk,
                    "b_count": s.count,
                    "b_first": s.first,
                    "b_last": s.last,
                    "b_example": s.example,
                    "b_report": s.report,
                }
                for pk, s in findings.items()
            ],
        )
    # findings without trials now stay for their links; "open" ones become "gone"
    session.execute(
        update(_FINDINGS).where(f.trial_count == 0, f.status == "open").values(status="gone")
    )
    if counts:
        session.execute(
            insert(_COUNTS),
            [
                {
                    "finding_id": fid,
                    "kernel_id": kid,
                    "campaign_id": cid,
                    "count": s.count,
                    "first_seen": s.first,
                    "last_seen": s.last,
                }
                for (fid, kid, cid), s in counts.items()
            ],
        )
