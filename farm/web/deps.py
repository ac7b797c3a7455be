"""What every request handler needs, apart from the app that provides it.

The routers (farm.web.api, farm.web.pages) depend on these and farm.web.app
builds the application from the routers, so the imports run one way:
app -> api/pages -> deps. ``WebState`` is stored on ``app.state.web`` by
``create_app``; handlers reach it through ``state(request)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Path, Query, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from farm.web.cache import TTLCache
from farm.web.queries import CURSOR_HELP, CURSOR_PATTERN, MAX_PAGE, MAX_PER_PAGE
from farm.web.schemas import MAX_FINDING_ID, MAX_TRIAL_ID

# Request parameters the API and the pages share: their limits are in the OpenAPI
# document, so a value beyond them is refused by validation (422, or 400 on a page)
# instead of reaching the database.
Limit = Annotated[int, Query(ge=1, le=MAX_PER_PAGE)]
PageNo = Annotated[int, Query(ge=1, le=MAX_PAGE)]
Cursor = Annotated[str | None, Query(pattern=CURSOR_PATTERN, description=CURSOR_HELP)]
FindingId = Annotated[int, Path(ge=1, le=MAX_FINDING_ID)]
FindingFilter = Annotated[int | None, Query(ge=1, le=MAX_FINDING_ID)]
TrialId = Annotated[int, Path(ge=1, le=MAX_TRIAL_ID, description="the trial's row id")]


@dataclass
class WebState:
    """What every request needs: the database, the token and the aggregate cache."""

    engine: Engine
    sessions: sessionmaker[Session]
    web_token: str | None
    cache: TTLCache
    templates: Jinja2Templates


def state(request: Request) -> WebState:
    return request.app.state.web  # type: ignore[no-any-return]


def session(request: Request) -> Iterator[Session]:
    """A read session per request (rolled back at the end: reads never commit)."""
    with state(request).sessions() as s:
        yield s


def html(
    request: Request, template: str, context: dict[str, Any], status: int = 200
) -> HTMLResponse:
    """Render a page; ``context`` gets the request's query parameters as ``params``."""
    context = {"params": dict(request.query_params), **context}
    return state(request).templates.TemplateResponse(request, template, context, status_code=status)
