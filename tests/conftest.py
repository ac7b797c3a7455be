"""Shared fixtures. Database fixtures run against real SQLite and PostgreSQL, no mocks.

PostgreSQL: the admin URL comes from $FARM_TEST_POSTGRES_URL, else the local
server at 127.0.0.1:5432 as user postgres or root. Each test gets a fresh
database ``zapfarm_t_<random>``, dropped afterwards. If no server answers, the
postgres cases are skipped with the reason, unless FARM_TEST_REQUIRE_POSTGRES=1
(CI), where that is a failure.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from farm.store import db

# The suite's own broker and result backend: Redis databases nobody else uses, emptied
# at the start, so messages left by an interrupted run (or a real farm on this Redis)
# never reach a test's workers. Set before anything imports workers.celery_app.
# FARM_TEST_REDIS_DBS="N,M" picks other databases (FARM_TEST_REDIS="host:port" another
# server), so two suites can share one machine.
_DBS = os.environ.get("FARM_TEST_REDIS_DBS", "14,15").split(",")
_REDIS = os.environ.get("FARM_TEST_REDIS", "127.0.0.1:6379")
TEST_BROKER_URL = f"redis://{_REDIS}/{_DBS[0]}"
TEST_RESULT_BACKEND = f"redis://{_REDIS}/{_DBS[1]}"


def pytest_configure(config: pytest.Config) -> None:
    os.environ["FARM_BROKER_URL"] = TEST_BROKER_URL
    os.environ["FARM_RESULT_BACKEND"] = TEST_RESULT_BACKEND
    import redis

    for url in (TEST_BROKER_URL, TEST_RESULT_BACKEND):
        with contextlib.suppress(redis.RedisError):  # tests that need Redis say so themselves
            redis.Redis.from_url(url, socket_connect_timeout=2).flushdb()


LOCAL_POSTGRES_ADMIN_URLS = (
    "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
    "postgresql+psycopg://root@127.0.0.1:5432/postgres",
)


def _admin_engine(url: str) -> Engine:
    return create_engine(
        url, isolation_level="AUTOCOMMIT", poolclass=NullPool, connect_args={"connect_timeout": 3}
    )


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    """A URL of a PostgreSQL role that may CREATE DATABASE (connected to the postgres db)."""
    candidates = (
        [os.environ["FARM_TEST_POSTGRES_URL"]]
        if os.environ.get("FARM_TEST_POSTGRES_URL")
        else list(LOCAL_POSTGRES_ADMIN_URLS)
    )
    errors = []
    for url in candidates:
        engine = _admin_engine(url)
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return url
        except OperationalError as exc:
            first = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            errors.append(f"{make_url(url).render_as_string()}: {first}")
        finally:
            engine.dispose()
    reason = (
        "PostgreSQL unreachable (" + "; ".join(errors) + "): start it with "
        "`pg_ctlcluster 15 main start` or set FARM_TEST_POSTGRES_URL"
    )
    if os.environ.get("FARM_TEST_REQUIRE_POSTGRES") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database, dropped at teardown."""
    name = f"zapfarm_t_{secrets.token_hex(6)}"
    admin = _admin_engine(postgres_admin_url)
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield make_url(postgres_admin_url).set(database=name).render_as_string(hide_password=False)
        with admin.connect() as conn:  # FORCE: a test that leaked a connection cannot block it
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite file (the file itself is created on first connect)."""
    return f"sqlite:///{tmp_path / 'farm.sqlite'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """An empty database on each backend the farm supports."""
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
def migrated_db_url(db_url: str) -> str:
    """db_url with the schema at Alembic head."""
    db.upgrade(db_url)
    return db_url


@pytest.fixture
def db_engine(migrated_db_url: str) -> Iterator[Engine]:
    engine = db.make_engine(migrated_db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def db_sessions(db_engine: Engine) -> sessionmaker[Session]:
    """A session factory on a migrated database (what the recorder takes)."""
    return db.session_factory(db_engine)


@pytest.fixture(scope="session")
def farm_domains() -> Callable[..., list[str]]:
    """Lists the farm's libvirt guests, defined or running, except those in ``ignore``.

    Tests snapshot the list first and check that nothing new is left (other
    farms on this host may have guests of their own). A stopped worker's
    guests go when libvirtd notices the closed connection (AUTODESTROY), which
    can take a moment: wait up to ``settle`` seconds.
    """

    def names(settle: float = 15.0, ignore: frozenset[str] = frozenset()) -> list[str]:
        deadline = time.monotonic() + settle
        while True:
            out = subprocess.run(
                ["virsh", "-c", "qemu:///system", "list", "--all", "--name"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            found = [n for n in out.split() if n.startswith("zapfarm-") and n not in ignore]
            if not found or time.monotonic() > deadline:
                return found
            time.sleep(0.5)

    return names
