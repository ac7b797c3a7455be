"""``farm web``: serve the results database over HTTP.

Registered on the main group by farm.cli.main (``main.add_command(web)``). Uvicorn
serves the app; the schema is checked before it starts, so a database that was
never migrated fails here with the fix instead of with 503s on every page.
"""

from __future__ import annotations

import click

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


@click.command("web")
@click.option("--host", default=DEFAULT_HOST, show_default=True, help="address to listen on")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--cache-ttl",
    default=30.0,
    show_default=True,
    type=click.FloatRange(0, 3600),
    help="seconds aggregates over trials may be reused (0: always recount)",
)
@click.pass_context
def web(ctx: click.Context, host: str, port: int, cache_ttl: float) -> None:
    """Serve the results database: pages for people, JSON under /api (see /openapi.json)."""
    import uvicorn
    from sqlalchemy import inspect

    from farm.cli.support import FarmError, err, settings_from
    from farm.settings import redact_url
    from farm.store.db import DatabaseError, make_engine
    from farm.web.app import create_app

    settings = settings_from(ctx)
    try:
        engine = make_engine(settings.database_url)
        with engine.connect() as conn:
            missing = {"trials", "findings", "campaigns"} - set(inspect(conn).get_table_names())
    except DatabaseError as exc:
        raise FarmError(str(exc)) from exc
    if missing:
        raise FarmError(
            f"the database at {redact_url(settings.database_url)} has no "
            f"{', '.join(sorted(missing))} table: run `farm db upgrade` first"
        )
    app = create_app(
        settings.database_url, web_token=settings.web_token, cache_ttl=cache_ttl, engine=engine
    )
    if not settings.web_token:
        err.print(
            "[yellow]note:[/] no web token: pages are read-only. Set FARM_WEB_TOKEN to allow "
            "starting/stopping campaigns and reproductions from the web.",
            highlight=False,
        )
    err.print(
        f"serving {redact_url(settings.database_url)} on http://{host}:{port}/", highlight=False
    )
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


if __name__ == "__main__":  # `python -m farm.cli.web` before farm.cli.main registers it
    web(obj={})
