"""Database engines, sessions and schema upgrades for the control plane.

Only the control plane imports this: workers never talk to the database.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, ExceptionContext, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker

from farm.settings import redact_url
from farm.store.models import Kernel

SQLITE_BUSY_TIMEOUT_MS = 30_000
PG_CONNECT_TIMEOUT_S = 10


class DatabaseError(RuntimeError):
    """The database cannot be used as configured; the message says how to fix it."""


class DatabaseUnavailable(DatabaseError):
    """Connecting failed: server down, database missing, bad credentials, unwritable file."""


class KernelConflict(DatabaseError):
    """A kernel name already stands for a different image."""


def _parse(url: str | URL) -> URL:
    try:
        return make_url(url)
    except ArgumentError as exc:
        raise DatabaseError(
            f"cannot parse database URL {redact_url(str(url))!r}: write it like "
            "postgresql+psycopg://user@host/db or sqlite:////abs/path/farm.sqlite"
        ) from exc


def make_engine(url: str | URL, **kwargs: Any) -> Engine:
    """An engine set up for the farm's two backends.

    SQLite: WAL (readers never block the recorder), foreign keys on, a busy
    timeout so concurrent writers wait instead of failing, and explicit BEGIN
    so transactions and savepoints behave as on PostgreSQL. PostgreSQL:
    pool_pre_ping, because control-plane processes live long and servers restart.
    Connection failures raise DatabaseUnavailable naming the fix.
    """
    parsed = _parse(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.drivername == "sqlite":
            parsed = parsed.set(drivername="sqlite+pysqlite")
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            folder = Path(database).expanduser().parent
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DatabaseUnavailable(
                    f"cannot create {folder} for the SQLite database ({exc.strerror}): set "
                    "cache_dir or FARM_DATABASE_URL to a writable place"
                ) from exc
        connect_args = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
        connect_args |= kwargs.pop("connect_args", {})
        engine = create_engine(parsed, connect_args=connect_args, **kwargs)
        _setup_sqlite(engine)
    elif backend == "postgresql":
        if parsed.drivername == "postgresql":  # psycopg 3 is what the farm ships with
            parsed = parsed.set(drivername="postgresql+psycopg")
        kwargs.setdefault("pool_pre_ping", True)
        connect_args = {"connect_timeout": PG_CONNECT_TIMEOUT_S} | kwargs.pop("connect_args", {})
        engine = create_engine(parsed, connect_args=connect_args, **kwargs)
    else:
        raise DatabaseError(
            f"unsupported database {redact_url(str(url))!r}: the farm runs on PostgreSQL "
            "(postgresql+psycopg://...) or SQLite (sqlite:///...)"
        )
    event.listen(engine, "handle_error", _explain_connect_error)
    return engine


def _setup_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        # pysqlite's own implicit BEGIN breaks SAVEPOINT and transactional DDL
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")  # durable enough with WAL, much faster
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN")


def _explain_connect_error(ctx: ExceptionContext) -> BaseException | None:
    """Turn a failure to connect into a DatabaseUnavailable that names the fix."""
    if ctx.connection is not None or ctx.engine is None:
        return None  # a statement failed, or a live connection dropped: not ours to explain
    msg = str(ctx.original_exception).strip()
    return DatabaseUnavailable(describe_connect_error(ctx.engine.url, msg))


def describe_connect_error(url: URL, msg: str) -> str:
    """The message for a failed connection: what happened and the command that fixes it."""
    shown = redact_url(url.render_as_string(hide_password=False))
    first = msg.splitlines()[0] if msg else "unknown error"
    if url.get_backend_name() == "sqlite":
        return (
            f"cannot open SQLite database {url.database} ({first}): make sure its folder exists "
            "and is writable, or point FARM_DATABASE_URL / database_url elsewhere"
        )
    where = f"{url.host or 'localhost'}:{url.port or 5432}"
    low = msg.lower()
    if "refused" in low or "no such file or directory" in low:
        return (
            f"PostgreSQL at {where} refused the connection ({shown}): start it with "
            f"`pg_ctlcluster {_pg_version()} main start` (or `systemctl start postgresql`), "
            "or set FARM_DATABASE_URL to a running server"
        )
    if "does not exist" in low and "database" in low:
        return (
            f"PostgreSQL at {where} has no database {url.database!r}: create it with "
            f"`createdb -h {url.host or 'localhost'} -U {url.username or 'postgres'} "
            f"{url.database}`, then run `farm db upgrade`"
        )
    if "authentication" in low or "password" in low or "role" in low:
        return (
            f"PostgreSQL at {where} rejected user {url.username!r} ({first}): fix the user or "
            "password in FARM_DATABASE_URL / database_url, or the server's pg_hba.conf"
        )
    if "timeout" in low or "timed out" in low:
        return (
            f"PostgreSQL at {where} did not answer within {PG_CONNECT_TIMEOUT_S} s ({first}): "
            "check the host, the port and any firewall between"
        )
    return f"cannot connect to PostgreSQL at {where} ({shown}): {first}"


def _pg_version() -> str:
    try:
        versions = sorted(
            os.listdir("/usr/lib/postgresql"), key=lambda v: int(v) if v.isdigit() else 0
        )
    except OSError:
        return "<version>"
    return versions[-1] if versions else "<version>"


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded objects usable after commit (the CLI prints them)."""
    return sessionmaker(engine, expire_on_commit=False)


# --- migrations -------------------------------------------------------------


def source_root() -> Path:
    """The checkout holding alembic.ini and migrations/ (the project installs editable)."""
    return Path(__file__).resolve().parents[2]


def alembic_config(url: str | URL) -> Config:
    """An Alembic Config for this checkout's migrations, aimed at ``url``."""
    root = source_root()
    ini = root / "alembic.ini"
    if not ini.is_file() or not (root / "migrations" / "env.py").is_file():
        raise DatabaseError(
            f"no migrations next to the package ({ini} or migrations/env.py missing): "
            "install zapfarm editable from its checkout (`pip install -e .`)"
        )
    cfg = Config(str(ini))
    cfg.set_main_option("script_location", str(root / "migrations"))
    url_text = url if isinstance(url, str) else url.render_as_string(hide_password=False)
    cfg.attributes["database_url"] = url_text
    cfg.attributes["configure_logger"] = False  # an application owns its logging
    return cfg


def upgrade(url: str | URL, revision: str = "head") -> None:
    """Bring the schema at ``url`` up to ``revision`` (idempotent)."""
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str | URL, revision: str) -> None:
    """Take the schema at ``url`` down to ``revision`` ("base" drops everything)."""
    command.downgrade(alembic_config(url), revision)


# --- kernels ----------------------------------------------------------------


def ensure_kernel(
    session: Session,
    name: str,
    release: str,
    path: str | None,
    sha256: str | None,
    source: str,
    *,
    provenance: dict[str, Any] | None = None,
) -> Kernel:
    """Get or create the kernel called ``name``; safe against concurrent callers.

    A name stands for one image forever, so that old trials stay attributed to
    what they really booted: a different sha256 under a known name is refused.
    A placeholder the recorder created from a result (no image known) is
    completed instead.
    """
    _insert_kernel_if_missing(session, name, release, path, sha256, source, provenance)
    kernel = session.scalars(select(Kernel).where(Kernel.name == name)).one()
    if sha256 and kernel.sha256 and kernel.sha256 != sha256:
        raise KernelConflict(
            f"kernel {name!r} is already registered with sha256 {kernel.sha256[:16]}..., "
            f"not {sha256[:16]}... ({path}): register the new image under a new name"
        )
    if kernel.sha256 is None and sha256:
        kernel.sha256, kernel.image_path = sha256, path
        kernel.release, kernel.source = release, source
        kernel.provenance = provenance
        session.flush()
    elif provenance and kernel.provenance is None:  # registered before provenance was kept
        kernel.provenance = provenance
        session.flush()
    elif path and sha256 and kernel.image_path != path:  # same image, moved (e.g. new cache_dir)
        kernel.image_path = path
        session.flush()
    return kernel


def _insert_kernel_if_missing(
    session: Session,
    name: str,
    release: str,
    path: str | None,
    sha256: str | None,
    source: str,
    provenance: dict[str, Any] | None = None,
) -> None:
    values = {
        "name": name,
        "release": release,
        "image_path": path,
        "sha256": sha256,
        "source": source,
        "provenance": provenance,
    }
    session.execute(
        dialect_insert(session, Kernel)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["name"])
    )


def dialect_insert(session: Session, model: Any) -> Any:
    """INSERT with ON CONFLICT support for the session's backend."""
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert(model)
    if name == "sqlite":
        return sqlite.insert(model)
    raise DatabaseError(f"the farm supports PostgreSQL and SQLite, not {name}")
