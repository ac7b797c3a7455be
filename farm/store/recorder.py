"""Store trial results exactly once.

Celery delivers at least once, and more than one control-plane process may
record: the same result can arrive twice, even at the same moment. The trial
row is keyed by ``trial_id`` and every write is conditional, so exactly one
delivery changes the database and every other one is reported as a duplicate.

Results are stored a batch at a time, in one transaction and a few statements
whatever the batch size:

1. lock the batch's rows that are not done yet, in trial_id order (PostgreSQL
   ``SELECT ... FOR UPDATE``: concurrent recorders of overlapping batches queue
   up in the same order and cannot deadlock; a row another recorder finished
   meanwhile is skipped, PostgreSQL re-checks ``status != 'done'`` after it
   waited). Rows already done are never locked, only read: they are duplicates;
2. one executemany ``UPDATE`` by primary key turns the locked rows done;
3. one multi-row ``INSERT ... ON CONFLICT DO NOTHING`` stores results of trials
   the database has never seen. If a concurrent writer inserted one of them
   first, the transaction is rolled back and the batch starts over: the other
   writer's row is committed by then, so it is found in step 1, and locks are
   never taken out of order.

On SQLite each transaction writes before it reads: a transaction that read
first cannot upgrade to a writer once another writer committed, while one that
writes first simply waits for the lock (busy timeout). So step 1 is preceded
by a write that changes nothing but takes the database's write lock, and from
then on no other recorder can interleave.

Guest output is untrusted: text and JSON are cleaned of what PostgreSQL
refuses (NUL characters, lone surrogates), so a hostile guest cannot make its
own result unrecordable and have Celery redeliver it forever.

A result whose verdict is a finding is attached to its finding (farm.store.findings)
in the same transaction, and only when this delivery stored it: a duplicate
delivery never counts twice.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, TypeVar, cast

from sqlalchemy import CursorResult, Executable, Table, Update, bindparam, select, update
from sqlalchemy.orm import Session, sessionmaker

from farm.params import SeedToken, TokenError, TrialParams
from farm.protocol import ResultError, TrialResult, validate_result
from farm.sanitize import clean_json, clean_text
from farm.store.db import dialect_insert, ensure_kernel
from farm.store.findings import attach_row, finding_key, trial_detail, trial_title
from farm.store.models import Campaign, Kernel, Trial, TrialStatus, utcnow
from farm.store.storage import CLEAN_CONSOLE_SAMPLE, console_columns
from farm.triage.verdict import FINDING_KINDS, Verdict

_VERDICT_RE = re.compile(r"^[a-z][a-z0-9-]{0,63}$")
_INT32 = 1 << 31
_T = TypeVar("_T")
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


@dataclass(frozen=True)
class NewTrial:
    """A trial to create as queued (enqueue_many): the token is its definition.

    ``params``, if given, must be what the token derives; omit it to derive it.
    """

    trial_id: str
    token: SeedToken | str
    kernel_id: int
    campaign_id: int | None = None
    params: TrialParams | Mapping[str, Any] | None = None


# trial ids per IN list: far below SQLite's and PostgreSQL's bind-parameter limits
# (executemany INSERTs are paged by SQLAlchemy itself)
_CHUNK = 500


def enqueue_many(session: Session, trials: Sequence[NewTrial]) -> None:
    """Create the queued rows of trials before they are sent to workers (idempotent).

    One ``INSERT ... ON CONFLICT (trial_id) DO NOTHING`` for the batch, rows in
    trial_id order, and no SELECT unless a trial_id already exists: one that
    exists with the same token is left as it is (queued, running or even done);
    with another token it fails with RecorderError and none of this call's rows
    stay written. Everything is checked before anything is written: tokens
    parse, params are what the tokens derive, and a trial_id repeated in the
    batch has one token.
    """
    rows: dict[str, dict[str, Any]] = {}
    for new in trials:
        token, params = _queued_definition(new)
        seen = rows.get(new.trial_id)
        if seen is not None:
            if seen["token"] != token:
                raise RecorderError(
                    f"trial {new.trial_id!r} appears twice in the batch, with tokens "
                    f"{seen['token']} and {token}: trial ids must be unique"
                )
            continue
        rows[new.trial_id] = {
            "trial_id": new.trial_id,
            "token": token,
            "params": params,
            "kernel_id": new.kernel_id,
            "campaign_id": new.campaign_id,
            "status": TrialStatus.QUEUED,
            "created_at": utcnow(),
        }
    if not rows:
        return
    ordered = [rows[trial_id] for trial_id in sorted(rows)]  # the recorder's lock order
    inserted = _insert_new(session, ordered)
    existing = [trial_id for trial_id in rows if trial_id not in inserted]
    for chunk in _chunks(existing):
        found = session.execute(
            select(Trial.trial_id, Trial.token).where(Trial.trial_id.in_(chunk))
        ).all()
        for trial_id, token in found:
            if token != rows[trial_id]["token"]:
                for pks in _chunks(list(inserted.values())):  # this call leaves nothing behind
                    session.execute(_TRIALS.delete().where(_TRIALS.c.id.in_(pks)))
                raise RecorderError(
                    f"trial {trial_id!r} already exists with token {token}, not "
                    f"{rows[trial_id]['token']}: trial ids must be unique"
                )


def enqueue(
    session: Session,
    *,
    trial_id: str,
    token: SeedToken | str,
    params: TrialParams | Mapping[str, Any] | None = None,
    kernel: Kernel,
    campaign: Campaign | None = None,
) -> Trial:
    """Create the queued row for one trial (idempotent); see enqueue_many.

    ``params`` must be what the token derives (the token is the trial's
    definition); omit it to derive it. Enqueueing an existing trial_id with
    the same token returns the existing row, with another token it fails.
    """
    new = NewTrial(trial_id, token, 0, None, params)
    _queued_definition(new)  # bad input fails before anything is written
    if kernel.id is None or (campaign is not None and campaign.id is None):
        session.flush()  # a kernel or campaign added in this session needs its id
    campaign_id = campaign.id if campaign is not None else None
    enqueue_many(session, [NewTrial(trial_id, token, kernel.id, campaign_id, params)])
    return session.scalars(select(Trial).where(Trial.trial_id == trial_id)).one()


def _queued_definition(new: NewTrial) -> tuple[str, dict[str, Any]]:
    """The canonical token and the params it derives, checked against given params."""
    seed = new.token if isinstance(new.token, SeedToken) else parse_token(new.token)
    derived = seed.params()
    if new.params is not None:
        given = (
            new.params if isinstance(new.params, TrialParams) else TrialParams.from_dict(new.params)
        )
        if given != derived:
            raise ValueError(
                f"params for trial {new.trial_id!r} differ from what token {seed} derives: "
                "put overrides into the token (SeedToken.with_overrides) instead"
            )
    return str(seed), derived.to_dict()


def mark_running(session: Session, trial_id: str, worker: str | None = None) -> bool:
    """Flag a queued trial as running (e.g. on Celery's task-started event); False if not queued."""
    stmt = (
        update(_TRIALS)
        .where(Trial.trial_id == trial_id, Trial.status == TrialStatus.QUEUED)
        .values(status=TrialStatus.RUNNING, worker=worker)
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
    checked = (_validated(result), _as_verdict(verdict))
    return _store_batch(session_factory, [checked], clean_console_sample)[0]


def record_many(
    session_factory: sessionmaker[Session],
    results: Iterable[tuple[TrialResult | Mapping[str, Any], Verdict | str]],
    *,
    clean_console_sample: float = CLEAN_CONSOLE_SAMPLE,
) -> list[RecordOutcome]:
    """Store (result, verdict) pairs in one transaction; outcomes in the given order.

    Everything is validated before anything is written, so one bad result
    leaves the whole batch unwritten. A trial reported twice in the batch is
    stored from its first result; the others are duplicates. Rows are locked
    and written in trial_id order, then attached to findings in signature
    order, so concurrent batches take their locks in the same order and cannot
    deadlock.
    """
    checked: list[tuple[TrialResult, Verdict]] = []
    for i, (result, verdict) in enumerate(results):
        try:
            checked.append((_validated(result), _as_verdict(verdict)))
        except (ResultError, ValueError) as exc:
            raise type(exc)(f"result #{i} of the batch: {exc}") from exc
    return _store_batch(session_factory, checked, clean_console_sample)


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


@dataclass(frozen=True)
class _Pending:
    """One validated result, ready to be written: its row's key and its done columns."""

    index: int  # position in the batch
    trial_id: str  # cleaned: what the row is keyed by
    token: str  # cleaned and canonical
    result: TrialResult
    verdict: Verdict
    values: dict[str, Any]  # done_values()
    signature: str | None  # its finding's, if the verdict is a finding

    def stored(self, pk: int, kernel_id: int, campaign_id: int | None) -> _Stored | None:
        if self.signature is None:
            return None
        seen_at = self.values["finished_at"] or self.values["recorded_at"]
        return _Stored(pk, kernel_id, campaign_id, self.verdict, seen_at, self.signature)


class _Raced(Exception):
    """A concurrent writer inserted a trial this batch was inserting: start over."""


def _store_batch(
    session_factory: sessionmaker[Session],
    checked: Sequence[tuple[TrialResult, Verdict]],
    sample: float,
) -> list[RecordOutcome]:
    """Write validated results in one transaction; outcomes in the given order."""
    outcomes: list[RecordOutcome] = [RecordOutcome.DUPLICATE] * len(checked)
    firsts: dict[str, _Pending] = {}  # by trial_id: a later result for it is a duplicate
    for i, (result, verdict) in enumerate(checked):
        trial_id = clean_text(result.trial_id)  # PostgreSQL refuses NUL even in a parameter
        if trial_id in firsts:
            continue
        key = finding_key(verdict.kind, verdict.title)
        firsts[trial_id] = _Pending(
            index=i,
            trial_id=trial_id,
            token=_canonical(clean_text(result.token)),
            result=result,
            verdict=verdict,
            values=done_values(result, verdict, sample),
            signature=key.signature if key is not None else None,
        )
    if not firsts:
        return outcomes
    pending = [firsts[trial_id] for trial_id in sorted(firsts)]
    # Each round that races makes progress: the row it lost is committed, so the next
    # round finds it. More rounds than rows means something else is wrong.
    for _ in range(len(pending) + 1):
        try:
            with session_factory.begin() as session:
                written = _store(session, pending)
        except _Raced:
            continue  # rolled back: nothing of this round was written
        for index, outcome in written.items():
            outcomes[index] = outcome
        return outcomes
    raise RecorderError(
        f"trials {', '.join(repr(p.trial_id) for p in pending[:5])}... could not be recorded: "
        "concurrent writers kept inserting them"
    )


def _store(session: Session, pending: Sequence[_Pending]) -> dict[int, RecordOutcome]:
    """One attempt at writing ``pending`` (sorted by trial_id); outcomes by batch index.

    Outcomes not returned are duplicates. Raises _Raced if a row to insert was
    inserted concurrently (PostgreSQL only: on SQLite this holds the write lock).
    """
    postgres = session.get_bind().dialect.name == "postgresql"
    if not postgres:
        _take_write_lock(session)
    by_id = {p.trial_id: p for p in pending}

    # 1. lock the rows that are not done, in trial_id order
    locked: dict[str, Any] = {}
    order = _TRIALS.c.trial_id.collate("C") if postgres else _TRIALS.c.trial_id
    for chunk in _chunks(list(by_id)):
        stmt = (
            select(
                _TRIALS.c.id,
                _TRIALS.c.trial_id,
                _TRIALS.c.token,
                _TRIALS.c.kernel_id,
                _TRIALS.c.campaign_id,
            )
            .where(_TRIALS.c.trial_id.in_(chunk), _TRIALS.c.status != TrialStatus.DONE)
            .order_by(order)
        )
        if postgres:
            stmt = stmt.with_for_update()
        locked.update((row.trial_id, row) for row in session.execute(stmt))
    for trial_id, row in locked.items():
        if row.token != by_id[trial_id].token:
            raise RecorderError(
                f"trial {trial_id!r} was queued with token {row.token}, but its "
                f"result reports {by_id[trial_id].token}: a worker mixed up trials"
            )
    # rows not locked are done (duplicates) or unknown (to insert)
    unlocked = [trial_id for trial_id in by_id if trial_id not in locked]
    status: dict[str, str] = {}
    for chunk in _chunks(unlocked):
        found = select(_TRIALS.c.trial_id, _TRIALS.c.status).where(_TRIALS.c.trial_id.in_(chunk))
        status.update((trial_id, row_status) for trial_id, row_status in session.execute(found))
    if any(s != "done" for s in status.values()):
        raise _Raced  # queued after step 1 looked (PostgreSQL): lock it in order next round

    outcomes: dict[int, RecordOutcome] = {}
    to_attach: list[_Stored] = []

    # 2. the queued/running rows become done: one executemany UPDATE by primary key
    if locked:
        columns = tuple(pending[0].values)  # done_values() always sets the same columns
        params = []
        for trial_id, row in locked.items():
            p = by_id[trial_id]
            params.append({"b_pk": row.id, **{f"b_{k}": v for k, v in p.values.items()}})
            outcomes[p.index] = RecordOutcome.UPDATED
            if (stored := p.stored(row.id, row.kernel_id, row.campaign_id)) is not None:
                to_attach.append(stored)
        updated = cast(CursorResult[Any], session.execute(_done_update(columns), params)).rowcount
        if updated != len(params):  # the rows are locked: this cannot happen
            raise RecorderError(f"{len(params) - updated} locked trials could not be updated")

    # 3. trials never queued are inserted done
    new = [by_id[trial_id] for trial_id in unlocked if trial_id not in status]
    if new:
        kernels = _reported_kernels(session, new)
        rows = [
            {
                "trial_id": p.trial_id,
                "token": p.token,
                "params": _params_of(p.token),
                "kernel_id": kernels[p.trial_id],
                "created_at": p.values["recorded_at"],
                **p.values,
            }
            for p in new
        ]
        inserted = _insert_new(session, rows)
        if len(inserted) < len(new):
            raise _Raced  # another writer inserted one first; it has committed by now
        for p in new:
            outcomes[p.index] = RecordOutcome.INSERTED
            if (stored := p.stored(inserted[p.trial_id], kernels[p.trial_id], None)) is not None:
                to_attach.append(stored)

    # 4. findings, in signature order
    for stored in sorted(to_attach, key=_Stored.lock_order):
        stored.attach(session)
    return outcomes


def _take_write_lock(session: Session) -> None:
    """SQLite: begin writing before reading (see the module docstring); changes nothing."""
    session.execute(update(_TRIALS).where(_TRIALS.c.id == -1).values(id=_TRIALS.c.id))


def _insert_new(session: Session, rows: Sequence[dict[str, Any]]) -> dict[str, int]:
    """INSERT ... ON CONFLICT (trial_id) DO NOTHING of rows with the same keys; ids of those
    inserted, by trial_id (a conflicting row is not returned).

    An executemany: SQLAlchemy compiles the statement once and sends the rows as
    multi-row VALUES pages, within the backend's bind-parameter limit.
    """
    stmt = (
        dialect_insert(session, _TRIALS)
        .on_conflict_do_nothing(index_elements=["trial_id"])
        .returning(_TRIALS.c.id, _TRIALS.c.trial_id)
    )
    return {row.trial_id: row.id for row in session.execute(stmt, list(rows))}


@lru_cache(maxsize=8)
def _done_update(columns: tuple[str, ...]) -> Update:
    """UPDATE of a trial's done columns by primary key, for executemany.

    Bind names differ from column names: SQLAlchemy reserves those for the SET clause.
    """
    return (
        update(_TRIALS)
        .where(_TRIALS.c.id == bindparam("b_pk"), _TRIALS.c.status != TrialStatus.DONE)
        .values({name: bindparam(f"b_{name}", type_=_TRIALS.c[name].type) for name in columns})
    )


def _chunks(items: Sequence[_T]) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _rowcount(session: Session, stmt: Executable) -> int:
    return cast(CursorResult[Any], session.execute(stmt)).rowcount


@lru_cache(maxsize=16384)
def parse_token(text: str) -> SeedToken:
    """SeedToken.parse, remembered for the trials in flight.

    A trial's token is read when it is routed, recorded and fed back to its
    campaign's search; parsing (which derives the params to check them) is pure
    and SeedToken is immutable, so one parse can serve them all. A token that
    does not parse raises TokenError every time (errors are not remembered).
    """
    return SeedToken.parse(text)


def _canonical(token: str) -> str:
    """The token as SeedToken prints it (overrides sorted), so spellings compare equal."""
    try:
        return str(parse_token(token))
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
        "status": TrialStatus.DONE,
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
    window = result.window
    values.update(
        window_entries=window.entries if window else None,
        window_skipped=window.skipped if window else None,
        window_swap_entries=window.swap_entries if window else None,
        window_swap_skipped=window.swap_skipped if window else None,
    )
    return values


def _reported_kernels(session: Session, new: Sequence[_Pending]) -> dict[str, int]:
    """Kernel ids of never-queued trials by trial_id, registering unknown kernels as placeholders.

    One SELECT for the batch; placeholders are created in name order (concurrent
    recorders take the kernels' locks in the same order), each with the release
    that the first of its trials (in trial_id order) reports.
    """
    names = {p.trial_id: clean_text(p.result.kernel) for p in new}
    known: dict[str, int] = {}
    wanted = sorted(set(names.values()))
    for chunk in _chunks(wanted):
        found = select(Kernel.name, Kernel.id).where(Kernel.name.in_(chunk))
        known.update((name, kernel_id) for name, kernel_id in session.execute(found))
    releases: dict[str, str] = {}
    for p in new:
        if names[p.trial_id] not in known:
            releases.setdefault(names[p.trial_id], _reported_release(p.result))
    for name in sorted(releases):
        known[name] = ensure_kernel(session, name, releases[name], None, None, "reported").id
    return {trial_id: known[name] for trial_id, name in names.items()}


def _reported_release(result: TrialResult) -> str:
    release = (
        result.guest.kernel_release
        if result.guest
        else result.program.kernel
        if result.program
        else ""
    )
    return clean_text(release)


def _params_of(token: str) -> dict[str, Any] | None:
    try:
        return parse_token(token).params().to_dict()
    except TokenError:
        return None  # the raw token is kept; a bad token must not lose the result


def _int32(value: int | None) -> int | None:
    """Exit codes and signals are small; anything else is guest garbage (kept in result JSON)."""
    return value if value is not None and -_INT32 <= value < _INT32 else None


def _timestamp(epoch: float) -> datetime | None:
    if not math.isfinite(epoch) or not 0 <= epoch <= _MAX_EPOCH:
        return None
    return datetime.fromtimestamp(epoch, UTC)
