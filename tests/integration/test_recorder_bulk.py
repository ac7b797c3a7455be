"""Set-based queueing and recording (enqueue_many, record_many) on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import Engine, event, select
from sqlalchemy.orm import Session, sessionmaker
from test_db import TOKEN, add_kernel, count, result, result_dict
from threads import run_threads

from farm.params import SeedToken
from farm.protocol import ResultError, TrialResult, validate_result
from farm.store import recorder
from farm.store.models import Campaign, Finding, FindingCount, Kernel, Trial
from farm.store.recorder import (
    NewTrial,
    RecorderError,
    RecordOutcome,
    enqueue,
    enqueue_many,
    record,
    record_many,
)
from farm.triage.verdict import judge

OTHER = "zf1-00000000000000ff"
SPLAT = "BUG: Bad rss-counter state mm:00000000 type:MM_SHMEMPAGES val:-1\n"


def token(n: int) -> str:
    return f"zf1-{n:016x}"


def campaign_id(sessions: sessionmaker[Session], name: str = "bulk") -> int:
    with sessions.begin() as s:
        found = s.scalar(select(Campaign).where(Campaign.name == name))
        if found is None:
            found = Campaign(name=name, spec={})
            s.add(found)
            s.flush()
        return found.id


def rows(sessions: sessionmaker[Session]) -> dict[str, dict[str, Any]]:
    with sessions() as s:
        trials = s.scalars(select(Trial).order_by(Trial.trial_id)).all()
        return {
            t.trial_id: {c.key: getattr(t, c.key) for c in Trial.__table__.columns} for t in trials
        }


def queue_many(sessions: sessionmaker[Session], trial_ids: list[str], **kw: Any) -> None:
    kernel_id = add_kernel(sessions)
    cid = campaign_id(sessions)
    with sessions.begin() as s:
        enqueue_many(s, [NewTrial(t, kw.get("token", TOKEN), kernel_id, cid) for t in trial_ids])


@contextmanager
def statements(engine: Engine) -> Iterator[list[str]]:
    """The SQL the engine sends meanwhile (an executemany counts once)."""
    seen: list[str] = []

    def listen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(" ".join(statement.split()))

    event.listen(engine, "before_cursor_execute", listen)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", listen)


# --- enqueue_many -----------------------------------------------------------


def test_enqueue_many_twice_gives_the_same_rows(db_sessions: sessionmaker[Session]) -> None:
    kernel_id = add_kernel(db_sessions)
    cid = campaign_id(db_sessions)
    batch = [
        NewTrial("bulk-000002", token(2), kernel_id, cid),
        NewTrial("bulk-000000", SeedToken.parse(token(0)), kernel_id, cid),
        # spelled out of order: stored canonical, with the params the token derives
        NewTrial("bulk-000001", TOKEN + "~rounds=1,pages=512", kernel_id, cid),
        NewTrial("bulk-000002", token(2), kernel_id, cid),  # repeated in the batch
    ]
    with db_sessions.begin() as s:
        enqueue_many(s, batch)
    first = rows(db_sessions)
    assert sorted(first) == ["bulk-000000", "bulk-000001", "bulk-000002"]
    one = first["bulk-000001"]
    assert (one["status"], one["token"]) == ("queued", TOKEN + "~pages=512,rounds=1")
    assert one["params"] == SeedToken.parse(one["token"]).params().to_dict()
    assert (one["kernel_id"], one["campaign_id"], one["batch_id"]) == (kernel_id, cid, None)

    with db_sessions.begin() as s:
        enqueue_many(s, batch)
        enqueue_many(s, batch[::-1])
        enqueue_many(s, [])
    assert rows(db_sessions) == first

    # a trial that is done by now stays done; enqueue() returns the existing row
    assert record(db_sessions, result("bulk-000000", token(0)), verdict="clean") == "updated"
    done = rows(db_sessions)["bulk-000000"]
    with db_sessions.begin() as s:
        enqueue_many(s, batch)
        again = enqueue(
            s, trial_id="bulk-000000", token=token(0), kernel=s.get_one(Kernel, kernel_id)
        )
        assert (again.id, again.status) == (done["id"], "done")
    assert rows(db_sessions)["bulk-000000"] == done
    assert count(db_sessions, Trial) == 3


def test_enqueue_many_refuses_a_different_token_and_writes_nothing(
    db_sessions: sessionmaker[Session],
) -> None:
    queue_many(db_sessions, ["bulk-a"])
    kernel_id = add_kernel(db_sessions)
    before = rows(db_sessions)
    with db_sessions.begin() as s:
        with pytest.raises(RecorderError, match="'bulk-a' already exists with token"):
            enqueue_many(
                s,
                [
                    NewTrial("bulk-0", token(10), kernel_id),
                    NewTrial("bulk-a", OTHER, kernel_id),
                    NewTrial("bulk-z", token(11), kernel_id),
                ],
            )
        assert s.scalars(select(Trial.trial_id)).all() == ["bulk-a"]  # even before rollback
        with pytest.raises(RecorderError, match="appears twice in the batch"):
            enqueue_many(
                s, [NewTrial("bulk-b", token(1), kernel_id), NewTrial("bulk-b", OTHER, kernel_id)]
            )
        wrong = SeedToken.parse(TOKEN).params().to_dict() | {"pages": 7}
        with pytest.raises(ValueError, match="put overrides into the token"):
            enqueue_many(
                s,
                [
                    NewTrial("bulk-c", token(1), kernel_id),
                    NewTrial("bulk-d", TOKEN, kernel_id, params=wrong),
                ],
            )
        with pytest.raises(ValueError, match="malformed seed token"):
            enqueue_many(s, [NewTrial("bulk-e", "not-a-token", kernel_id)])
    assert rows(db_sessions) == before


def test_enqueue_many_is_one_insert(db_sessions: sessionmaker[Session], db_engine: Engine) -> None:
    kernel_id = add_kernel(db_sessions)
    batch = [NewTrial(f"one-{i:04d}", token(i), kernel_id) for i in range(200)]
    with statements(db_engine) as sql, db_sessions.begin() as s:
        enqueue_many(s, batch)
    inserts = [q for q in sql if q.startswith("INSERT INTO trials")]
    assert len(inserts) == 1 and not any(q.startswith("SELECT") for q in sql), sql
    assert count(db_sessions, Trial) == 200


# --- record_many ------------------------------------------------------------


def test_mixed_batch(db_sessions: sessionmaker[Session]) -> None:
    """Queued -> updated, already done -> duplicate, never queued -> inserted, in input order."""
    queue_many(db_sessions, ["mix-q1", "mix-q2", "mix-q3", "mix-d1"])
    with db_sessions.begin() as s:
        assert recorder.mark_running(s, "mix-q2", "host-a")
    assert record(db_sessions, result("mix-d1"), verdict="clean") == RecordOutcome.UPDATED
    assert record(db_sessions, result("mix-d2"), verdict="clean") == RecordOutcome.INSERTED
    before = rows(db_sessions)

    anomalous = result("mix-n1", console=SPLAT)
    batch: list[tuple[TrialResult | dict[str, Any], Any]] = [
        (result("mix-q2"), "clean"),
        (result("mix-n2", kernel="never-seen-kernel"), "clean"),
        (result_dict("mix-d1", outcome="timeout", program=None), "invalid"),  # done: no change
        (anomalous, judge(anomalous)),
        (result("mix-q1", console=SPLAT), judge(result("mix-q1", console=SPLAT))),
        (result("mix-d2"), "clean"),
        (result("mix-n1", console=SPLAT), judge(anomalous)),  # again within the batch
        (result("mix-q2", worker="host-b"), "anomaly"),  # again, differently: first one wins
    ]
    assert record_many(db_sessions, batch) == [
        RecordOutcome.UPDATED,
        RecordOutcome.INSERTED,
        RecordOutcome.DUPLICATE,
        RecordOutcome.INSERTED,
        RecordOutcome.UPDATED,
        RecordOutcome.DUPLICATE,
        RecordOutcome.DUPLICATE,
        RecordOutcome.DUPLICATE,
    ]
    after = rows(db_sessions)
    assert set(after) == set(before) | {"mix-n1", "mix-n2"}
    assert after["mix-d1"] == before["mix-d1"] and after["mix-d2"] == before["mix-d2"]
    assert after["mix-q3"] == before["mix-q3"]  # not in the batch: still queued
    for trial_id in ("mix-q1", "mix-q2"):  # updated in place: same row, same trial columns
        kept = ("id", "kernel_id", "campaign_id", "token", "params", "created_at", "batch_id")
        assert {k: after[trial_id][k] for k in kept} == {k: before[trial_id][k] for k in kept}
        assert after[trial_id]["status"] == "done"
    assert (after["mix-q2"]["verdict"], after["mix-q2"]["worker"]) == ("clean", "host-a")
    n2 = after["mix-n2"]
    assert (n2["status"], n2["campaign_id"], n2["params"]) == (
        "done",
        None,
        SeedToken.parse(TOKEN).params().to_dict(),
    )
    assert n2["created_at"] == n2["recorded_at"]
    with db_sessions() as s:
        kernel = s.get_one(Kernel, n2["kernel_id"])
        assert (kernel.name, kernel.source, kernel.release) == (
            "never-seen-kernel",
            "reported",
            "6.1.0-26-amd64",
        )
        # the two newly stored anomalous results are counted once each, in one finding
        [finding] = s.scalars(select(Finding)).all()
        assert finding.trial_count == 2
        assert sorted(s.scalars(select(FindingCount.count)).all()) == [1, 1]  # two campaigns
        linked = s.scalars(select(Trial.trial_id).where(Trial.finding_id == finding.id)).all()
        assert sorted(linked) == ["mix-n1", "mix-q1"]

    # the same batch again changes nothing
    assert record_many(db_sessions, batch) == [RecordOutcome.DUPLICATE] * len(batch)
    assert rows(db_sessions) == after
    with db_sessions() as s:
        assert s.scalars(select(Finding.trial_count)).all() == [2]


def test_bulk_rows_equal_single_rows(db_sessions: sessionmaker[Session]) -> None:
    """A batch stores exactly what one-by-one recording stores (bar ids and times)."""
    volatile = {"id", "trial_id", "created_at", "recorded_at", "result"}
    clean = result_dict("x")["program"] | {
        "vma": {"found": True, "rss_kb": 0, "pss_shmem_kb": 0},
        "rss_shmem_kb": {"before": 0, "populated": 16384, "punched": 0},
    }
    results = [
        result("eq-0", console=SPLAT),
        result("eq-1", outcome="timeout", program=None, console="", error="bad\x00"),
        result("eq-2", console="plain console\n", program=clean),
        validate_result(result_dict("eq-3") | {"token": "not-a-token"}),
    ]
    queue_many(db_sessions, ["eq-0", "eq-2"])
    queue_many(db_sessions, ["eq-0-single", "eq-2-single"])
    single = []
    for r in results:
        copy = r.model_copy(update={"trial_id": r.trial_id + "-single"})
        single.append(record(db_sessions, copy, verdict=judge(copy), clean_console_sample=1.0))
    bulk = record_many(db_sessions, [(r, judge(r)) for r in results], clean_console_sample=1.0)
    assert bulk == single == ["updated", "inserted", "updated", "inserted"]
    stored = rows(db_sessions)
    for r in results:
        one, many = stored[r.trial_id + "-single"], stored[r.trial_id]
        assert {k: v for k, v in one.items() if k not in volatile} == {
            k: v for k, v in many.items() if k not in volatile
        }, r.trial_id
        assert one["result"] | {"trial_id": r.trial_id} == many["result"]
    assert stored["eq-2"]["verdict"] == "clean"
    assert stored["eq-2"]["console_z"] is not None  # sampled at 1.0: kept compressed
    assert stored["eq-0"]["finding_id"] is not None


def test_a_mixed_up_trial_fails_the_whole_batch(db_sessions: sessionmaker[Session]) -> None:
    queue_many(db_sessions, ["mx-1", "mx-2"])
    before = rows(db_sessions)
    batch = [
        (result("mx-0"), "clean"),
        (result("mx-1"), "clean"),
        (result("mx-2", token=OTHER), "clean"),
        (result("mx-3", console=SPLAT), judge(result("mx-3", console=SPLAT))),
    ]
    with pytest.raises(RecorderError, match=r"'mx-2' was queued with token .* mixed up"):
        record_many(db_sessions, batch)
    with pytest.raises(ResultError, match=r"result #2 of the batch"):
        record_many(db_sessions, [*batch[:2], (result_dict("mx-9", outcome="?"), "clean")])
    assert rows(db_sessions) == before
    assert count(db_sessions, Finding) == 0


def test_record_many_is_a_few_statements_whatever_the_batch(
    db_sessions: sessionmaker[Session], db_engine: Engine
) -> None:
    ids = [f"few-{i:04d}" for i in range(64)]
    queue_many(db_sessions, ids)
    batch = [(result(t), "clean") for t in ids]
    with statements(db_engine) as sql:
        assert record_many(db_sessions, batch) == [RecordOutcome.UPDATED] * 64
    work = [q for q in sql if q.split()[0] in ("SELECT", "UPDATE", "INSERT")]
    postgres = db_engine.dialect.name == "postgresql"
    # SQLite: the lock-taking no-op write, then the locking read, then one executemany
    assert len(work) == (2 if postgres else 3), sql
    read = next(q for q in work if q.startswith("SELECT"))
    if postgres:
        assert read.endswith("FOR UPDATE") and 'COLLATE "C"' in read
    else:
        assert work[0].startswith("UPDATE trials") and work.index(read) == 1  # write first

    with statements(db_engine) as sql:
        assert record_many(db_sessions, batch) == [RecordOutcome.DUPLICATE] * 64
    assert not any(q.startswith("INSERT") for q in sql), sql
    assert len([q for q in sql if q.startswith("UPDATE")]) == (0 if postgres else 1), sql


def test_sqlite_recorder_holds_the_write_lock_before_it_reads(
    db_sessions: sessionmaker[Session], db_engine: Engine
) -> None:
    if db_engine.dialect.name != "sqlite":
        pytest.skip("SQLite only")
    other = sqlite3.connect(db_engine.url.database or "", timeout=0, isolation_level=None)
    try:
        with db_sessions.begin() as s:
            recorder._take_write_lock(s)
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
    finally:
        other.close()


def test_chunk_boundaries(db_sessions: sessionmaker[Session], monkeypatch: Any) -> None:
    """Batches larger than one statement's worth of rows are split, same results."""
    monkeypatch.setattr(recorder, "_CHUNK", 3)
    kernel_id = add_kernel(db_sessions)
    with db_sessions.begin() as s:
        enqueue_many(s, [NewTrial(f"ch-{i:02d}", token(i), kernel_id) for i in range(0, 20, 2)])
        enqueue_many(s, [NewTrial(f"ch-{i:02d}", token(i), kernel_id) for i in range(0, 20, 2)])
    record_many(db_sessions, [(result(f"ch-{i:02d}", token(i)), "clean") for i in range(0, 20, 4)])
    batch = [(result(f"ch-{i:02d}", token(i)), "clean") for i in range(20)]
    expect = [
        RecordOutcome.DUPLICATE
        if i % 4 == 0
        else RecordOutcome.UPDATED
        if i % 2 == 0
        else RecordOutcome.INSERTED
        for i in range(20)
    ]
    assert record_many(db_sessions, batch) == expect
    assert count(db_sessions, Trial) == 20
    with db_sessions() as s:
        assert set(s.scalars(select(Trial.status))) == {"done"}


def test_concurrent_overlapping_batches_record_each_trial_once(
    db_sessions: sessionmaker[Session],
) -> None:
    """8 recorders, each a batch of queued and never-queued trials overlapping the others'."""
    queued = [f"ov-q{i:02d}" for i in range(16)]
    unknown = [f"ov-u{i:02d}" for i in range(16)]
    queue_many(db_sessions, queued)
    everything = queued + unknown

    def batch(i: int) -> list[tuple[str, RecordOutcome]]:
        mine = everything[i * 4 :] + everything[: i * 4]  # rotated: different input orders
        mine = mine[: len(mine) // 2 + 4]
        pairs = [(result(t, console=SPLAT), judge(result(t, console=SPLAT))) for t in mine]
        return list(zip(mine, record_many(db_sessions, pairs), strict=True))

    out = run_threads(8, batch)
    stored = Counter(t for got in out for t, o in got if o != RecordOutcome.DUPLICATE)
    covered = {t for got in out for t, _ in got}
    assert stored == Counter(covered)  # every trial some batch carried: stored exactly once
    for got in out:
        for t, o in got:
            assert o in (
                (RecordOutcome.UPDATED, RecordOutcome.DUPLICATE)
                if t in queued
                else (RecordOutcome.INSERTED, RecordOutcome.DUPLICATE)
            )
    with db_sessions() as s:
        done = s.scalars(select(Trial.trial_id).where(Trial.status == "done")).all()
        assert sorted(done) == sorted(covered)
        [finding] = s.scalars(select(Finding)).all()
        assert finding.trial_count == len(covered)
        assert sum(s.scalars(select(FindingCount.count))) == len(covered)


def test_a_boot_report_is_stored_with_the_trial_that_followed(
    db_sessions: sessionmaker[Session],
) -> None:
    """What a guest printed between trials is kept, against its boot, with the next trial."""
    prior = {
        "boot_id": "0a1b2c3d4e5f",
        "kernel_release": "6.1.0-26-amd64",
        "after_trial": "bulk-000041",
        "died": False,
        "titles": ["BUG: Bad rss-counter state"],
        "console": "[ 90.6] BUG: Bad rss-counter state mm:0000 type:MM_SHMEMPAGES val:-1\x00\n",
    }
    queue_many(db_sessions, ["bulk-000042"])
    stored = result("bulk-000042", prior_boot=prior)
    assert record_many(db_sessions, [(stored, judge(stored))]) == [RecordOutcome.UPDATED]
    with db_sessions() as s:
        kept = s.scalars(select(Trial.result).where(Trial.trial_id == "bulk-000042")).one()
    assert kept is not None and kept["prior_boot"]["boot_id"] == "0a1b2c3d4e5f"
    assert kept["prior_boot"]["titles"] == ["BUG: Bad rss-counter state"]
    assert kept["prior_boot"]["console"].startswith("[ 90.6] BUG: Bad rss-counter state")
