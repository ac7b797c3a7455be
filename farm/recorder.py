"""Store trial results exactly once.

Celery delivers at least once, and more than one control-plane process may
record: the same result can arrive twice, even at the same moment. The trial
row is keyed by ``trial_id`` and every write is conditional, so exactly one
delivery changes the database and every other one is reported as a duplicate:

- a queued/running row becomes done by ``UPDATE ... WHERE status != 'done'``
  (PostgreSQL re-checks the condition after a concurrent writer commits, so
  only one UPDATE matches);
- a trial the database has never seen is ``INSERT ... ON CONFLICT DO NOTHING``.

Each transaction writes before it reads: on SQLite a transaction that read
first cannot upgrade to a writer once another writer committed, while one that
writes first simply waits for the lock (busy timeout).

Guest output is untrusted: text and JSON are cleaned of what PostgreSQL
refuses (NUL characters, lone surrogates), so a hostile guest cannot make its
own result unrecordable and have Celery redeliver it forever.

A result whose verdict is a finding is attached to its finding (farm.findings)
in the same transaction, and only when this delivery stored it: a duplicate
delivery never counts twice.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import CursorResult, Executable, Table, select, update
from sqlalchemy.orm import Session, sessionmaker

from farm.db import dialect_insert, ensure_kernel
from farm.findings import attach_row, finding_key, trial_detail, trial_title
from farm.models import Campaign, Kernel, Trial, utcnow
from farm.params import SeedToken, TokenError, TrialParams
from farm.result import ResultError, TrialResult, validate_result
from farm.sanitize import clean_json, clean_text
from farm.storage import CLEAN_CONSOLE_SAMPLE, console_columns
from farm.triage.verdict import FINDING_KINDS, Verdict

_VERDICT_RE = re.compile(r"^[a-z][a-z0-9-]{0,63}$")
_INT32 = 1 << 31
_MAX_EPOCH = 253402300799.0  # 9999-12-31T23:59:59Z


# Core statements on the table, not ORM bulk ones: their rowcount and RETURNING
# report exactly what the database did.
_TRIALS = cast(Table, Trial.__table__)


class RecordOutcome(enum.StrEnum):
    """What recording one result did."""

    INSERTED = "inserted"  # no row existed: a done row was created
    UPDATED = "updated"  # the queued/running row became done
    DUPLICATE = "duplicate"  # the trial was already done: nothing changed


class RecorderError(RuntimeError):
    """A result that contradicts what the database says about its trial."""


# --- queueing ---------------------------------------------------------------


def enqueue(
    session: Session,
    *,
    trial_id: str,
    token: SeedToken | str,
    params: TrialParams | Mapping[str, Any] | None = None,
    kernel: Kernel,
    campaign: Campaign | None = None,
) -> Trial:
    """Create the queued row for a trial before it is sent to a worker (idempotent).

    ``params`` must be what the token derives (the token is the trial's
    definition); omit it to derive it. Enqueueing an existing trial_id with
    the same token returns the existing row, with another token it fails.
    """
    seed = token if isinstance(token, SeedToken) else SeedToken.parse(token)
    derived = seed.params()
    if params is not None:
        given = params if isinstance(params, TrialParams) else TrialParams.from_dict(params)
        if given != derived:
            raise ValueError(
                f"params for trial {trial_id!r} differ from what token {seed} derives: "
                "put overrides into the token (SeedToken.with_overrides) instead"
            )
    existing = session.scalars(select(Trial).where(Trial.trial_id == trial_id)).one_or_none()
    if existing is not None:
        if existing.token != str(seed):
            raise RecorderError(
                f"trial {trial_id!r} already exists with token {existing.token}, not {seed}: "
                "trial ids must be unique"
            )
        return existing
    trial = Trial(
        trial_id=trial_id,
        token=str(seed),
        params=derived.to_dict(),
        kernel=kernel,
        campaign=campaign,
        status="queued",
    )
    session.add(trial)
    session.flush()
    return trial


def mark_running(session: Session, trial_id: str, worker: str | None = None) -> bool:
    """Flag a queued trial as running (e.g. on Celery's task-started event); False if not queued."""
    stmt = (
        update(_TRIALS)
        .where(Trial.trial_id == trial_id, Trial.status == "queued")
        .values(status="running", worker=worker)
    )
    return _rowcount(session, stmt) > 0


# --- recording --------------------------------------------------------------


def record(
    session_factory: sessionmaker[Session],
    result: TrialResult | Mapping[str, Any],
    *,
    verdict: Verdict | str,
    clean_console_sample: float = CLEAN_CONSOLE_SAMPLE,
) -> RecordOutcome:
    """Store one result in its own transaction; safe to call again with the same result.

    ``verdict`` is what farm.triage.verdict.judge() returned; a plain kind
    string is accepted for kinds that are not findings ("clean", "invalid",
    "infra-error", ...). A dict (as Celery hands it over) is validated first:
    ResultError names the bad field and nothing is written.
    """
    checked = _validated(result)
    judged = _as_verdict(verdict)
    with session_factory.begin() as session:
        outcome, stored = _record_one(session, checked, judged, clean_console_sample)
        if stored is not None:
            stored.attach(session)
        return outcome


def record_many(
    session_factory: sessionmaker[Session],
    results: Iterable[tuple[TrialResult | Mapping[str, Any], Verdict | str]],
    *,
    clean_console_sample: float = CLEAN_CONSOLE_SAMPLE,
) -> list[RecordOutcome]:
    """Store (result, verdict) pairs in one transaction; outcomes in the given order.

    Everything is validated before anything is written, so one bad result
    leaves the whole batch unwritten. Rows are written in trial_id order, then
    attached to findings in signature order, so concurrent batches take their
    locks in the same order and cannot deadlock.
    """
    checked: list[tuple[TrialResult, Verdict]] = []
    for i, (result, verdict) in enumerate(results):
        try:
            checked.append((_validated(result), _as_verdict(verdict)))
        except (ResultError, ValueError) as exc:
            raise type(exc)(f"result #{i} of the batch: {exc}") from exc
    outcomes: list[RecordOutcome | None] = [None] * len(checked)
    order = sorted(range(len(checked)), key=lambda i: checked[i][0].trial_id)
    with session_factory.begin() as session:
        to_attach: list[_Stored] = []
        for i in order:
            outcomes[i], stored = _record_one(session, *checked[i], clean_console_sample)
            if stored is not None:
                to_attach.append(stored)
        for stored in sorted(to_attach, key=_Stored.lock_order):
            stored.attach(session)
    return [o for o in outcomes if o is not None]


@dataclass(frozen=True)
class _Stored:
    """A trial this delivery stored whose verdict is a finding, waiting to be attached."""

    pk: int
    kernel_id: int
    campaign_id: int | None
    verdict: Verdict
    seen_at: datetime
    signature: str

    def lock_order(self) -> tuple[str, int, int, int]:
        return (self.signature, self.kernel_id, self.campaign_id or 0, self.pk)

    def attach(self, session: Session) -> None:
        attach_row(
            session,
            trial_pk=self.pk,
            kernel_id=self.kernel_id,
            campaign_id=self.campaign_id,
            verdict=self.verdict,
            seen_at=self.seen_at,
        )


def _rowcount(session: Session, stmt: Executable) -> int:
    return cast(CursorResult[Any], session.execute(stmt)).rowcount


def _canonical(token: str) -> str:
    """The token as SeedToken prints it (overrides sorted), so spellings compare equal."""
    try:
        return str(SeedToken.parse(token))
    except TokenError:
        return token


def _validated(result: TrialResult | Mapping[str, Any]) -> TrialResult:
    return result if isinstance(result, TrialResult) else validate_result(result)


def _as_verdict(verdict: Verdict | str) -> Verdict:
    """A Verdict with a valid kind; a bare finding kind is refused (it has no title)."""
    kind = verdict.kind if isinstance(verdict, Verdict) else verdict
    if not isinstance(kind, str) or not _VERDICT_RE.match(kind):
        raise ValueError(
            f"verdict {kind!r} is not a verdict name: lowercase letters, digits and dashes, "
            "e.g. 'clean' or 'infra-error'"
        )
    if isinstance(verdict, Verdict):
        return verdict
    if kind in FINDING_KINDS:
        raise ValueError(
            f"verdict {kind!r} is a finding kind: pass the Verdict that "
            "farm.triage.verdict.judge() returned, so the finding gets its title"
        )
    return Verdict(kind)


def _record_one(
    session: Session, result: TrialResult, verdict: Verdict, sample: float
) -> tuple[RecordOutcome, _Stored | None]:
    """Write the trial row; what to attach to a finding if this delivery stored it."""
    values = done_values(result, verdict, sample)
    key = finding_key(verdict.kind, verdict.title)

    def stored(pk: int, kernel_id: int, campaign_id: int | None) -> _Stored | None:
        if key is None:
            return None
        seen_at = values["finished_at"] or values["recorded_at"]
        return _Stored(pk, kernel_id, campaign_id, verdict, seen_at, key.signature)

    trial_id = clean_text(result.trial_id)  # PostgreSQL refuses NUL even in a parameter
    token = _canonical(clean_text(result.token))
    # At most two rounds: a queued row that appears between our UPDATE and INSERT
    # (enqueue racing its own result) is updated on the second round.
    for _ in range(2):
        stmt = (
            update(_TRIALS)
            .where(Trial.trial_id == trial_id, Trial.status != "done")
            .where(Trial.token == token)
            .values(**values)
            .returning(_TRIALS.c.id, _TRIALS.c.kernel_id, _TRIALS.c.campaign_id)
        )
        updated = session.execute(stmt).first()
        if updated is not None:
            return RecordOutcome.UPDATED, stored(*updated)
        row = session.execute(
            select(Trial.status, Trial.token).where(Trial.trial_id == trial_id)
        ).one_or_none()
        if row is not None:
            if row.status == "done":
                return RecordOutcome.DUPLICATE, None
            if row.token != token:
                raise RecorderError(
                    f"trial {trial_id!r} was queued with token {row.token}, but its "
                    f"result reports {token}: a worker mixed up trials"
                )
            continue  # not done and same token: the UPDATE must match now
        kernel_id = _reported_kernel(session, result).id
        insert = dialect_insert(session, _TRIALS).values(
            trial_id=trial_id,
            token=token,
            params=_params_of(token),
            kernel_id=kernel_id,
            created_at=values["recorded_at"],
            **values,
        )
        insert = insert.on_conflict_do_nothing(index_elements=["trial_id"]).returning(_TRIALS.c.id)
        pk = session.execute(insert).scalar()
        if pk is not None:  # no row back: someone else inserted
            return RecordOutcome.INSERTED, stored(pk, kernel_id, None)
    # the conflicting row was done by now, or it is queued and the UPDATE above lost it
    status = session.scalar(select(Trial.status).where(Trial.trial_id == trial_id))
    if status == "done":
        return RecordOutcome.DUPLICATE, None
    raise RecorderError(f"trial {trial_id!r} could not be recorded (status {status!r})")


def done_values(
    result: TrialResult, verdict: Verdict | str, clean_console_sample: float = CLEAN_CONSOLE_SAMPLE
) -> dict[str, Any]:
    """The columns a recorded result sets on its trial row (finding_id is set by attaching)."""
    judged = verdict if isinstance(verdict, Verdict) else Verdict(verdict)
    prog = result.program
    guest = result.guest
    raw = result.to_json()
    raw.pop("console", None)
    numa = prog.numa_nodes if prog is not None else guest.numa_nodes if guest else None
    values: dict[str, Any] = {
        "status": "done",
        "outcome": result.outcome,
        "verdict": judged.kind,
        "title": trial_title(judged),
        "verdict_detail": trial_detail(judged),
        "worker": clean_text(result.worker),
        "boot_id": clean_text(guest.boot_id) if guest else None,
        "booted": result.booted,
        "numa_nodes": numa,
        "exit_code": _int32(result.exit_code),
        "signal": _int32(result.signal),
        "elapsed_ms": result.elapsed_ms,
        "started_at": _timestamp(result.started_at),
        "finished_at": _timestamp(result.finished_at),
        "error": clean_text(result.error) if result.error is not None else None,
        **console_columns(
            result.trial_id, clean_text(result.console), judged.kind, clean_console_sample
        ),
        "result": clean_json(raw),
        "recorded_at": utcnow(),
    }
    values.update(
        vma_rss_kb=prog.vma.rss_kb if prog else None,
        vma_pss_shmem_kb=prog.vma.pss_shmem_kb if prog else None,
        rss_shmem_before_kb=prog.rss_shmem_kb.before if prog else None,
        rss_shmem_populated_kb=prog.rss_shmem_kb.populated if prog else None,
        rss_shmem_punched_kb=prog.rss_shmem_kb.punched if prog else None,
        rollup_pss_shmem_kb=prog.rollup.pss_shmem_kb if prog else None,
        migrate_moved=prog.migrate.moved if prog else None,
        migrate_enoent=prog.migrate.enoent if prog else None,
        migrate_ebusy=prog.migrate.ebusy if prog else None,
        migrate_other=prog.migrate.other if prog else None,
        migrate_call_errors=prog.migrate.call_errors if prog else None,
    )
    return values


def _reported_kernel(session: Session, result: TrialResult) -> Kernel:
    """The kernel a never-queued trial ran on, registered as a placeholder if unknown."""
    name = clean_text(result.kernel)
    kernel = session.scalars(select(Kernel).where(Kernel.name == name)).one_or_none()
    if kernel is not None:
        return kernel
    release = (
        result.guest.kernel_release
        if result.guest
        else result.program.kernel
        if result.program
        else ""
    )
    return ensure_kernel(session, name, clean_text(release), None, None, "reported")


def _params_of(token: str) -> dict[str, Any] | None:
    try:
        return SeedToken.parse(token).params().to_dict()
    except TokenError:
        return None  # the raw token is kept; a bad token must not lose the result


def _int32(value: int | None) -> int | None:
    """Exit codes and signals are small; anything else is guest garbage (kept in result JSON)."""
    return value if value is not None and -_INT32 <= value < _INT32 else None


def _timestamp(epoch: float) -> datetime | None:
    if not math.isfinite(epoch) or not 0 <= epoch <= _MAX_EPOCH:
        return None
    return datetime.fromtimestamp(epoch, UTC)
