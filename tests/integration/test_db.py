"""The database layer against real SQLite and PostgreSQL: migrations and the recorder."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, func, inspect, select, text
from sqlalchemy.orm import Session, sessionmaker

from farm.params import SeedToken
from farm.protocol import ResultError, TrialResult, validate_result
from farm.store import db
from farm.store.models import Base, Campaign, Kernel, Trial
from farm.store.recorder import (
    RecorderError,
    RecordOutcome,
    enqueue,
    mark_running,
    record,
    record_many,
)

TOKEN = "zf1-8188e2f542964e0c"
# kernel 1, as a migration test inserts it before upgrading past the models' revision
KERNEL_ROW = text(
    "INSERT INTO kernels (id, name, release, source, created_at) "
    "VALUES (1, 'k', '6.1', 'custom', CURRENT_TIMESTAMP)"
)
FARM_TABLES = {"kernels", "campaigns", "trials", "findings", "finding_counts", "workers"}


def result_dict(trial_id: str, token: str = TOKEN, **overrides: Any) -> dict[str, Any]:
    """A valid worker result, as it arrives from the broker (docs/protocol.md)."""
    params = SeedToken.parse(token).params().to_dict()
    data: dict[str, Any] = {
        "trial_id": trial_id,
        "token": token,
        "kernel": "debian-6.1.0-26",
        "worker": "host-a",
        "outcome": "ok",
        "guest": {
            "name": "zapfarm-host-a-0",
            "boot_id": "4f0c2e1a-77b1-4e59-9d0e-5a3c3f1f2b11",
            "kernel_release": "6.1.0-26-amd64",
            "numa_nodes": 2,
            "virt_type": "qemu",
            "boot_seconds": 8.7,
            "trials_on_boot": 1,
        },
        "booted": True,
        "exit_code": 0,
        "signal": None,
        "elapsed_ms": 2134,
        "program": {
            "program": "zapmigrate",
            "format": 1,
            "inputs": params,
            "kernel": "6.1.0-26-amd64",
            "numa_nodes": 2,
            "page_size": 4096,
            "migrate": {
                "calls": 12288,
                "call_errors": 0,
                "moved": 12280,
                "enoent": 5,
                "ebusy": 3,
                "other": 0,
                "other_errnos": {},
            },
            "punch": {"calls": 4096, "errors": 0},
            "vma": {"found": True, "rss_kb": 4, "pss_shmem_kb": 4},
            "rollup": {"pss_shmem_kb": 696},
            "rss_shmem_kb": {"before": 0, "populated": 16384, "punched": 4},
            "timing_us": {"populate": 1000, "migrate": 2000000, "total": 2100000},
            "error": None,
        },
        "console": (
            "zapfarm: trial t begin\nBUG: Bad rss-counter state mm:0000 type:MM_SHMEMPAGES val:1\n"
        ),
        "started_at": 1_764_300_000.25,
        "finished_at": 1_764_300_002.5,
    }
    data.update(overrides)
    return data


def result(trial_id: str, token: str = TOKEN, **overrides: Any) -> TrialResult:
    return validate_result(result_dict(trial_id, token, **overrides))


def add_kernel(sessions: sessionmaker[Session]) -> int:
    with sessions.begin() as s:
        return db.ensure_kernel(
            s,
            "debian-6.1.0-26",
            "6.1.0-26-amd64",
            "/var/lib/zapfarm/vmlinuz-6.1.0-26",
            "ab" * 32,
            "debian:bookworm",
        ).id


def queue(sessions: sessionmaker[Session], trial_id: str, token: str = TOKEN) -> None:
    kernel_id = add_kernel(sessions)
    with sessions.begin() as s:
        campaign = s.scalar(select(Campaign).where(Campaign.name == "demo"))
        if campaign is None:
            campaign = Campaign(name="demo", spec={"trials": 10})
            s.add(campaign)
        enqueue(
            s,
            trial_id=trial_id,
            token=token,
            kernel=s.get_one(Kernel, kernel_id),
            campaign=campaign,
        )


def trial_row(sessions: sessionmaker[Session], trial_id: str) -> dict[str, Any]:
    with sessions() as s:
        row = s.scalars(select(Trial).where(Trial.trial_id == trial_id)).one()
        return {c.key: getattr(row, c.key) for c in inspect(Trial).column_attrs}


def count(sessions: sessionmaker[Session], model: type[Base]) -> int:
    with sessions() as s:
        return s.scalar(select(func.count()).select_from(model)) or 0


# --- migrations -------------------------------------------------------------


def schema_diff(url: str) -> list[Any]:
    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            return compare_metadata(ctx, Base.metadata)
    finally:
        engine.dispose()


def table_names(url: str) -> set[str]:
    engine = db.make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_migrations_both_ways_match_the_models(db_url: str) -> None:
    db.upgrade(db_url)
    assert table_names(db_url) >= FARM_TABLES
    assert schema_diff(db_url) == []
    db.upgrade(db_url)  # idempotent

    db.downgrade(db_url, "base")
    assert table_names(db_url) & FARM_TABLES == set()

    db.upgrade(db_url)
    assert table_names(db_url) >= FARM_TABLES
    assert schema_diff(db_url) == []


LATER_MIGRATION = """
import sqlalchemy as sa
from alembic import op

revision = "t002"
down_revision = "0001"


def upgrade():
    with op.batch_alter_table("kernels", recreate="always") as batch:
        batch.add_column(sa.Column("note", sa.Text()))
    {fail}


def downgrade():
    with op.batch_alter_table("kernels", recreate="always") as batch:
        batch.drop_column("note")
"""


@pytest.mark.parametrize("fail", [False, True], ids=["ok", "failing"])
def test_sqlite_batch_migration_of_a_referenced_table(
    sqlite_url: str, tmp_path: Path, fail: bool
) -> None:
    """Rebuilding a table that trials point at keeps the trials; a failure rolls back."""
    versions = tmp_path / "versions"
    versions.mkdir()
    raise_line = 'raise RuntimeError("migration bug")' if fail else "pass"
    (versions / "t002_note.py").write_text(LATER_MIGRATION.replace("{fail}", raise_line))
    db.upgrade(sqlite_url)
    engine = db.make_engine(sqlite_url)
    sessions = db.session_factory(engine)
    assert record(sessions, result("keep-0001"), verdict="clean") == RecordOutcome.INSERTED
    engine.dispose()

    cfg = db.alembic_config(sqlite_url)
    cfg.set_main_option(
        "version_locations",
        os.pathsep.join([str(db.source_root() / "migrations/versions"), str(versions)]),
    )
    if fail:
        with pytest.raises(RuntimeError, match="migration bug"):
            command.upgrade(cfg, "heads")
    else:
        command.upgrade(cfg, "heads")

    engine = db.make_engine(sqlite_url)
    try:
        columns = {c["name"] for c in inspect(engine).get_columns("kernels")}
        assert ("note" in columns) is not fail
        assert count(db.session_factory(engine), Trial) == 1
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall() == []
    finally:
        engine.dispose()
    if not fail:
        command.downgrade(cfg, "0001")


def test_sqlite_engine_settings(sqlite_url: str) -> None:
    engine = db.make_engine(sqlite_url)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_refused_connection_names_the_fix() -> None:
    engine = db.make_engine("postgresql+psycopg://postgres@127.0.0.1:1/zapfarm")
    with pytest.raises(db.DatabaseUnavailable, match=r"refused the connection.*pg_ctlcluster"):
        engine.connect()
    engine.dispose()


@pytest.mark.postgres
def test_missing_database_names_the_fix(postgres_admin_url: str) -> None:
    from sqlalchemy.engine import make_url

    url = make_url(postgres_admin_url).set(database="zapfarm_t_does_not_exist")
    with pytest.raises(db.DatabaseUnavailable, match=r"no database .*createdb"):
        db.upgrade(url)


# --- kernels ----------------------------------------------------------------


def test_ensure_kernel_gets_or_creates_and_refuses_a_new_image(
    db_sessions: sessionmaker[Session],
) -> None:
    first = add_kernel(db_sessions)
    assert add_kernel(db_sessions) == first
    with db_sessions.begin() as s, pytest.raises(db.KernelConflict, match="new name"):
        db.ensure_kernel(s, "debian-6.1.0-26", "6.1.0-26-amd64", "/x", "cd" * 32, "custom")
    with db_sessions.begin() as s:
        moved = db.ensure_kernel(s, "debian-6.1.0-26", "6.1.0-26-amd64", "/new", "ab" * 32, "x")
        assert (moved.id, moved.image_path) == (first, "/new")
    assert count(db_sessions, Kernel) == 1


def test_sqlite_folder_that_cannot_exist_names_the_fix(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(db.DatabaseUnavailable, match="FARM_DATABASE_URL"):
        db.make_engine(f"sqlite:///{tmp_path / 'file' / 'sub' / 'farm.sqlite'}")


# --- recorder ---------------------------------------------------------------


def test_enqueue_then_record(db_sessions: sessionmaker[Session]) -> None:
    queue(db_sessions, "demo-3f2a-0001")
    queued = trial_row(db_sessions, "demo-3f2a-0001")
    assert queued["status"] == "queued"
    assert queued["params"] == SeedToken.parse(TOKEN).params().to_dict()
    with db_sessions.begin() as s:
        assert mark_running(s, "demo-3f2a-0001", "host-a")

    assert record(db_sessions, result("demo-3f2a-0001"), verdict="anomaly") == RecordOutcome.UPDATED

    row = trial_row(db_sessions, "demo-3f2a-0001")
    assert row["status"] == "done"
    assert (row["outcome"], row["verdict"], row["worker"]) == ("ok", "anomaly", "host-a")
    assert row["boot_id"] == "4f0c2e1a-77b1-4e59-9d0e-5a3c3f1f2b11"
    assert (row["booted"], row["numa_nodes"], row["exit_code"], row["elapsed_ms"]) == (
        True,
        2,
        0,
        2134,
    )
    assert row["started_at"] == datetime.fromtimestamp(1_764_300_000.25, UTC)
    assert row["finished_at"].tzinfo is not None
    assert row["recorded_at"] >= row["created_at"]
    oracle = {
        k: row[k]
        for k in (
            "vma_rss_kb",
            "vma_pss_shmem_kb",
            "rss_shmem_before_kb",
            "rss_shmem_populated_kb",
            "rss_shmem_punched_kb",
            "rollup_pss_shmem_kb",
            "migrate_moved",
            "migrate_enoent",
            "migrate_ebusy",
            "migrate_other",
            "migrate_call_errors",
        )
    }
    assert oracle == {
        "vma_rss_kb": 4,
        "vma_pss_shmem_kb": 4,
        "rss_shmem_before_kb": 0,
        "rss_shmem_populated_kb": 16384,
        "rss_shmem_punched_kb": 4,
        "rollup_pss_shmem_kb": 696,
        "migrate_moved": 12280,
        "migrate_enoent": 5,
        "migrate_ebusy": 3,
        "migrate_other": 0,
        "migrate_call_errors": 0,
    }
    assert "Bad rss-counter state" in row["console"]
    assert "console" not in row["result"]
    assert row["result"]["program"]["migrate"]["moved"] == 12280
    assert validate_result({**row["result"], "console": row["console"]}) == result("demo-3f2a-0001")


WINDOW_COLUMNS = ("window_entries", "window_skipped", "window_swap_entries", "window_swap_skipped")


def test_window_is_stored_per_trial(db_sessions: sessionmaker[Session]) -> None:
    """A count kernel's window lands in four columns; a kernel without counters leaves NULL."""
    window = {"entries": 37, "skipped": 5, "swap_entries": 2, "swap_skipped": 0}
    queue(db_sessions, "w-1")
    queue(db_sessions, "w-2")
    assert record(db_sessions, result("w-1", window=window), verdict="clean") == (
        RecordOutcome.UPDATED
    )
    assert record(db_sessions, result("w-2"), verdict="clean") == RecordOutcome.UPDATED
    row = trial_row(db_sessions, "w-1")
    assert tuple(row[c] for c in WINDOW_COLUMNS) == (37, 5, 2, 0)
    assert row["result"]["window"] == window
    plain = trial_row(db_sessions, "w-2")
    assert tuple(plain[c] for c in WINDOW_COLUMNS) == (None,) * 4
    assert plain["result"]["window"] is None
    # more skipped than met is not a counter: refused before anything is written
    for bad in (
        {**window, "skipped": 38},
        {**window, "swap_skipped": 3},
        {**window, "entries": -1},
    ):
        queue(db_sessions, "w-3")
        with pytest.raises(ResultError, match="window"):
            record(db_sessions, result_dict("w-3", window=bad), verdict="clean")
    assert trial_row(db_sessions, "w-3")["status"] == "queued"


def test_window_migration_keeps_earlier_trials(db_url: str) -> None:
    """0006 adds the window columns as NULL to recorded trials and drops only them again."""
    db.upgrade(db_url, "0005")
    engine = db.make_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(KERNEL_ROW)
            conn.execute(
                text(
                    "INSERT INTO trials (id, trial_id, kernel_id, token, status, outcome, "
                    "migrate_moved, created_at) VALUES (1, 'old', 1, :token, 'done', 'ok', 99, "
                    "CURRENT_TIMESTAMP)"
                ),
                {"token": TOKEN},
            )
        db.upgrade(db_url)
        with engine.connect() as conn:
            row = conn.execute(
                text(f"SELECT migrate_moved, {', '.join(WINDOW_COLUMNS)} FROM trials")
            ).one()
        assert tuple(row) == (99, None, None, None, None)
        db.downgrade(db_url, "0005")
        columns = {c["name"] for c in inspect(engine).get_columns("trials")}
        assert not columns & set(WINDOW_COLUMNS)
        assert "migrate_moved" in columns
        with engine.connect() as conn:
            assert conn.execute(text("SELECT trial_id, migrate_moved FROM trials")).one() == (
                "old",
                99,
            )
    finally:
        engine.dispose()


def test_a_preset_token_of_space_v3_is_queued_and_recorded(
    db_sessions: sessionmaker[Session],
) -> None:
    """seed-2022 names every knob: 257 characters on v3, over the 256 trials.token once took."""
    token = str(SeedToken.parse("zf3-00000000000000a1").with_preset("seed-2022"))
    assert len(token) > 256
    queue(db_sessions, "preset-1", token=token)
    with db_sessions.begin() as s:
        assert mark_running(s, "preset-1", "host-a")
    assert record(db_sessions, result("preset-1", token=token), verdict="clean") == (
        RecordOutcome.UPDATED
    )
    row = trial_row(db_sessions, "preset-1")
    assert (row["token"], row["status"]) == (token, "done")


def test_token_migration_widens_the_column_and_keeps_trials(db_url: str) -> None:
    """0007 takes tokens of 512 characters on both databases and keeps the rows of 0006."""
    db.upgrade(db_url, "0006")
    engine = db.make_engine(db_url)
    insert = text(
        "INSERT INTO trials (id, trial_id, kernel_id, token, status, created_at) "
        "VALUES (:id, :tid, 1, :token, 'queued', CURRENT_TIMESTAMP)"
    )
    try:
        with engine.begin() as conn:
            conn.execute(KERNEL_ROW)
            conn.execute(insert, {"id": 1, "tid": "old", "token": TOKEN})
        db.upgrade(db_url)
        long_token = TOKEN + "~" + "x" * 400
        with engine.begin() as conn:
            conn.execute(insert, {"id": 2, "tid": "new", "token": long_token})
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT trial_id, token FROM trials ORDER BY id")).all()
        assert [tuple(r) for r in rows] == [("old", TOKEN), ("new", long_token)]
        width = {c["name"]: c["type"] for c in inspect(engine).get_columns("trials")}["token"]
        assert width.length == 512
        assert "ix_trials_token" in {i["name"] for i in inspect(engine).get_indexes("trials")}
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM trials WHERE id = 2"))
        db.downgrade(db_url, "0006")
        width = {c["name"]: c["type"] for c in inspect(engine).get_columns("trials")}["token"]
        assert width.length == 256
    finally:
        engine.dispose()


def test_double_delivery_is_a_duplicate_and_changes_nothing(
    db_sessions: sessionmaker[Session],
) -> None:
    queue(db_sessions, "demo-3f2a-0002")
    assert record(db_sessions, result("demo-3f2a-0002"), verdict="clean") == RecordOutcome.UPDATED
    before = trial_row(db_sessions, "demo-3f2a-0002")

    again = result_dict("demo-3f2a-0002")
    assert record(db_sessions, again, verdict="clean") == RecordOutcome.DUPLICATE
    # a redelivery that ran again and came out differently still changes nothing
    other = result("demo-3f2a-0002", outcome="timeout", program=None, worker="host-b")
    assert record(db_sessions, other, verdict="anomaly") == RecordOutcome.DUPLICATE

    assert trial_row(db_sessions, "demo-3f2a-0002") == before
    assert count(db_sessions, Trial) == 1


def test_result_for_an_unknown_trial_is_inserted_once(db_sessions: sessionmaker[Session]) -> None:
    r = result("adhoc-0001", kernel="custom-revert-5abfd71d")
    assert record(db_sessions, r, verdict="anomaly") == RecordOutcome.INSERTED
    assert record(db_sessions, r, verdict="anomaly") == RecordOutcome.DUPLICATE
    row = trial_row(db_sessions, "adhoc-0001")
    assert (row["status"], row["campaign_id"], row["token"]) == ("done", None, TOKEN)
    assert row["params"] == SeedToken.parse(TOKEN).params().to_dict()
    with db_sessions() as s:
        kernel = s.get_one(Kernel, row["kernel_id"])
        assert (kernel.name, kernel.release, kernel.source, kernel.sha256) == (
            "custom-revert-5abfd71d",
            "6.1.0-26-amd64",
            "reported",
            None,
        )


@pytest.mark.parametrize("queued", [True, False], ids=["queued", "unknown"])
def test_concurrent_deliveries_record_exactly_once(
    db_sessions: sessionmaker[Session], db_url: str, queued: bool
) -> None:
    threads_n = 8
    if queued:
        queue(db_sessions, "demo-race-0001")
    r = result("demo-race-0001")
    barrier = threading.Barrier(threads_n)
    outcomes: list[RecordOutcome] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def deliver() -> None:
        try:
            barrier.wait(timeout=10)
            outcome = record(db_sessions, r, verdict="clean")
            with lock:
                outcomes.append(outcome)
        except BaseException as exc:  # reported below; a thread must not swallow it
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=deliver) for _ in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    winner = RecordOutcome.UPDATED if queued else RecordOutcome.INSERTED
    assert sorted(outcomes) == sorted([winner] + [RecordOutcome.DUPLICATE] * (threads_n - 1))
    assert count(db_sessions, Trial) == 1
    assert trial_row(db_sessions, "demo-race-0001")["status"] == "done"


def test_invalid_result_raises_and_writes_nothing(db_sessions: sessionmaker[Session]) -> None:
    queue(db_sessions, "demo-3f2a-0003")
    before = trial_row(db_sessions, "demo-3f2a-0003")
    bad = result_dict("demo-3f2a-0003")
    bad["program"]["migrate"]["moved"] = -1

    with pytest.raises(ResultError, match=r"program\.migrate\.moved"):
        validate_result(bad)
    with pytest.raises(ResultError, match=r"program\.migrate\.moved"):
        record(db_sessions, bad, verdict="clean")
    with pytest.raises(ResultError, match=r"result #1 of the batch: .*outcome"):
        record_many(
            db_sessions,
            [
                (result_dict("demo-3f2a-0004"), "clean"),
                (result_dict("demo-3f2a-0005", outcome="exploded"), "clean"),
            ],
        )

    assert trial_row(db_sessions, "demo-3f2a-0003") == before
    assert count(db_sessions, Trial) == 1


def test_record_many_in_one_transaction(db_sessions: sessionmaker[Session]) -> None:
    queue(db_sessions, "demo-b-0002")
    batch: list[tuple[TrialResult | dict[str, Any], str]] = [
        (result("demo-b-0003"), "clean"),
        (result("demo-b-0002"), "anomaly"),
        (result_dict("demo-b-0003"), "clean"),  # delivered twice within the batch
    ]
    assert record_many(db_sessions, batch) == [
        RecordOutcome.INSERTED,
        RecordOutcome.UPDATED,
        RecordOutcome.DUPLICATE,
    ]
    assert record_many(db_sessions, batch[:2]) == [RecordOutcome.DUPLICATE] * 2
    assert count(db_sessions, Trial) == 2


def test_hostile_guest_text_is_stored(db_sessions: sessionmaker[Session]) -> None:
    """NUL bytes from a serial console must not make a result unrecordable on PostgreSQL."""
    program = result_dict("x")["program"] | {"kernel": "6.1\x00evil"}
    r = result(
        "demo-nul-0001",
        console="panic\x00\x00 after",
        error="bad\x00",
        program=program,
        kernel="custom\x00",
    )
    assert record(db_sessions, r, verdict="anomaly") == RecordOutcome.INSERTED
    row = trial_row(db_sessions, "demo-nul-0001")
    assert row["console"] == "panic\ufffd\ufffd after"
    assert row["error"] == "bad\ufffd"
    assert row["result"]["program"]["kernel"] == "6.1\ufffdevil"
    with pytest.raises(ResultError, match="exit_code"):  # out of range: rejected, not truncated
        validate_result(result_dict("demo-nul-0002") | {"exit_code": 1 << 40})
    with db_sessions() as s:
        assert s.get_one(Kernel, row["kernel_id"]).name == "custom\ufffd"


def test_missing_json_is_sql_null(db_sessions: sessionmaker[Session]) -> None:
    r = validate_result(result_dict("demo-bad-token-0001") | {"token": "not-a-token"})
    assert record(db_sessions, r, verdict="invalid") == RecordOutcome.INSERTED
    with db_sessions() as s:
        found = s.scalars(select(Trial.trial_id).where(Trial.params.is_(None))).all()
    assert found == ["demo-bad-token-0001"]


def test_token_mismatch_is_refused(db_sessions: sessionmaker[Session]) -> None:
    queue(db_sessions, "demo-3f2a-0006")
    r = result("demo-3f2a-0006", token="zf1-0000000000000001")
    with pytest.raises(RecorderError, match="mixed up"):
        record(db_sessions, r, verdict="clean")
    assert trial_row(db_sessions, "demo-3f2a-0006")["status"] == "queued"


def test_token_spelling_does_not_matter(db_sessions: sessionmaker[Session]) -> None:
    queue(db_sessions, "demo-3f2a-0007", token=TOKEN + "~rounds=1,pages=512")
    r = result("demo-3f2a-0007", token=TOKEN + "~pages=512,rounds=1")
    assert record(db_sessions, r, verdict="clean") == RecordOutcome.UPDATED


def test_enqueue_is_idempotent_and_checks_params(db_sessions: sessionmaker[Session]) -> None:
    queue(db_sessions, "demo-3f2a-0008")
    queue(db_sessions, "demo-3f2a-0008")
    assert count(db_sessions, Trial) == 1
    with db_sessions.begin() as s:
        kernel = s.scalars(select(Kernel)).one()
        with pytest.raises(RecorderError, match="already exists"):
            enqueue(s, trial_id="demo-3f2a-0008", token="zf1-0000000000000001", kernel=kernel)
        wrong = SeedToken.parse(TOKEN).params().to_dict() | {"pages": 7}
        with pytest.raises(ValueError, match="put overrides into the token"):
            enqueue(s, trial_id="demo-3f2a-0009", token=TOKEN, params=wrong, kernel=kernel)


def test_database_constraints_hold(db_engine: Engine) -> None:
    """The schema itself refuses impossible rows, whoever writes them."""
    from sqlalchemy.exc import IntegrityError

    statements: list[Callable[[Any], Any]] = [
        lambda c: c.execute(
            text(
                "INSERT INTO campaigns (name, spec, status, created_at) "
                "VALUES ('x', '{}', 'bogus', CURRENT_TIMESTAMP)"
            )
        ),
        lambda c: c.execute(
            text(
                "INSERT INTO trials (trial_id, kernel_id, token, status, created_at) "
                "VALUES ('t', 999, 'zf1-0000000000000001', 'queued', CURRENT_TIMESTAMP)"
            )
        ),
    ]
    for stmt in statements:
        with pytest.raises(IntegrityError), db_engine.begin() as conn:
            stmt(conn)


def test_kernel_provenance_migration_keeps_old_rows(db_url: str) -> None:
    """0005 adds kernels.provenance: rows from before keep NULL, new builds store their inputs."""
    db.upgrade(db_url, "0004")
    engine = db.make_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO kernels (name, release, source, created_at) "
                    "VALUES ('old', '6.1.0', 'custom', CURRENT_TIMESTAMP)"
                )
            )
        db.upgrade(db_url)
        prov = {
            "source": "linux-source-6.1 6.1.192-3",
            "instrumentation": "warn",
            "patches": [{"name": "0001-x.patch", "sha256": "ab" * 32, "origin": "user"}],
        }
        sessions = db.session_factory(engine)
        with sessions.begin() as session:
            db.ensure_kernel(session, "built", "6.1.192", "/k/bzImage", "cd" * 32, "build:x",
                             provenance=prov)  # fmt: skip
        with sessions() as session:
            rows = {k.name: k.provenance for k in session.scalars(select(Kernel))}
        assert rows == {"old": None, "built": prov}
        db.downgrade(db_url, "0004")
        assert "provenance" not in {c["name"] for c in inspect(engine).get_columns("kernels")}
    finally:
        engine.dispose()
