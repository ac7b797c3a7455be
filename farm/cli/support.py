"""What every ``farm`` command group shares: errors that name the fix, settings, the database."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click
from rich.console import Console
from rich.markup import escape
from sqlalchemy.orm import Session, sessionmaker

from farm.settings import Settings, SettingsError, load_settings

err = Console(stderr=True)


class FarmError(click.ClickException):
    """An error the user can fix; shown without a traceback, exit code 2."""

    exit_code = 2

    def show(self, file: object = None) -> None:
        err.print(f"[bold red]error:[/] {escape(self.message)}", highlight=False)


def settings_from(ctx: click.Context) -> Settings:
    root = ctx.find_root()
    try:
        return load_settings(root.obj.get("config") if root.obj else None)
    except SettingsError as exc:
        raise FarmError(str(exc)) from exc


@contextmanager
def open_db(ctx: click.Context) -> Iterator[sessionmaker[Session]]:
    """The results database at the newest schema; errors name the fix."""
    from farm.store.db import DatabaseError, make_engine, session_factory, upgrade

    settings = settings_from(ctx)
    try:
        upgrade(settings.database_url)
        engine = make_engine(settings.database_url)
    except DatabaseError as exc:
        raise FarmError(str(exc)) from exc
    try:
        yield session_factory(engine)
    finally:
        engine.dispose()
