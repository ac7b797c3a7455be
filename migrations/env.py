"""Alembic environment for zapfarm.

The database URL comes from, in order: a connection or URL the caller put in
``config.attributes`` ("connection" / "database_url", as farm.store.db.upgrade
does), ``-x database_url=...`` on the command line, ``$FARM_DATABASE_URL``,
then farm.toml or the default SQLite file (farm.settings). SQLite needs batch
mode: it cannot ALTER most things in place, so Alembic copies the table.
"""

from __future__ import annotations

import os
from logging.config import fileConfig
from typing import Any

from alembic import context
from sqlalchemy.engine import Connection

from farm.settings import load_settings
from farm.store.db import make_engine
from farm.store.models import Base, JSONType, UTCDateTime

config = context.config
target_metadata = Base.metadata

if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name)


def _database_url() -> str:
    url = config.attributes.get("database_url") or context.get_x_argument(as_dictionary=True).get(
        "database_url"
    )
    return url or os.environ.get("FARM_DATABASE_URL") or load_settings().database_url


def _render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    """Render the farm's own types as plain SQLAlchemy, so versions never import farm."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    if type_ == "type" and obj is JSONType:
        autogen_context.imports.add("from sqlalchemy.dialects import postgresql")
        return 'sa.JSON().with_variant(postgresql.JSONB(), "postgresql")'
    return False


def _configure(connection: Connection | None = None, url: str | None = None) -> None:
    sqlite = connection is not None and connection.dialect.name == "sqlite"
    context.configure(
        connection=connection,
        url=url,
        target_metadata=target_metadata,
        render_as_batch=True,
        render_item=_render_item,
        compare_type=True,
        # farm.store.db.make_engine issues its own BEGIN on SQLite, so DDL there is
        # transactional too: a failed migration leaves the old schema intact
        transactional_ddl=True if sqlite else None,
        literal_binds=connection is None,
        dialect_opts={"paramstyle": "named"} if connection is None else None,
    )


def _run(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()
        if connection.dialect.name == "sqlite":
            bad = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if bad:  # raising here rolls the whole migration back
                raise RuntimeError(f"migration broke foreign keys (table, rowid, parent): {bad}")


def run_migrations_offline() -> None:
    _configure(url=_database_url())
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(_database_url())
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "sqlite":
                # Batch mode rebuilds a table to alter it; with foreign keys on, dropping
                # the old copy of a referenced table fails (or cascades). SQLite's own
                # recipe: keys off (only possible outside a transaction), check after.
                conn.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")
            _run(conn)
    finally:
        engine.dispose()  # never hand a keys-off connection back to anyone


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
