"""``farm db``: the results database."""

from __future__ import annotations

import click

from farm.cli.support import FarmError, settings_from


@click.group()
def db() -> None:
    """The results database."""


@db.command("upgrade")
@click.pass_context
def db_upgrade(ctx: click.Context) -> None:
    """Migrate the database to the newest schema (Alembic)."""
    from farm.settings import redact_url
    from farm.store.db import DatabaseError, upgrade

    settings = settings_from(ctx)
    try:
        upgrade(settings.database_url)
    except DatabaseError as exc:
        raise FarmError(str(exc)) from exc
    click.echo(f"database at {redact_url(settings.database_url)} is at the newest schema")
