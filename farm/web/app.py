"""The web application: FastAPI serving server-rendered pages and a JSON API.

Why this shape: FastAPI gives the JSON API its OpenAPI document for free and
renders Jinja2 templates for people, from the same query functions and
pydantic models (farm.web.queries, farm.web.schemas). Handlers are plain
``def`` functions: SQLAlchemy sessions are synchronous and FastAPI runs such
handlers in its thread pool. Pages work without JavaScript; the only script
is a static copy-to-clipboard helper, and the Content-Security-Policy forbids
inline scripts, so escaped guest output could not run even if escaping failed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from farm.artifacts.kernels import provenance_summary
from farm.settings import Settings
from farm.store import db
from farm.web import api, charts, pages, text
from farm.web.actions import ActionError
from farm.web.auth import Refused
from farm.web.cache import DEFAULT_TTL_S, TTLCache
from farm.web.deps import WebState, state
from farm.web.metrics import registry_for
from farm.web.queries import QueryError
from farm.web.schemas import ParamRates, Series

HERE = Path(__file__).resolve().parent
API_PREFIX = "/api"
MAX_PROBLEMS = 20  # validation errors listed in a 422 (a huge body can have thousands)

CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "form-action 'self'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = (
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)


class SecurityHeaders:
    """Adds the CSP and friends to every response (plain ASGI: no per-request task overhead)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in names]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _query_string(params: dict[str, Any], **changes: Any) -> str:
    """``?a=1&b=2`` from the current filters with ``changes`` applied (None drops a key)."""
    merged = {**params, **changes}
    kept = {k: v for k, v in merged.items() if v not in (None, "")}
    return "?" + urlencode(kept, doseq=True) if kept else "?"


def series_labels(series: Series) -> list[str]:
    """Tick labels for a time series: as precise as its buckets."""
    width = series.bucket_seconds
    fmt = "%H:%M" if width < 3600 else "%m-%d %H:%M" if width < 86400 else "%Y-%m-%d"
    return [start.strftime(fmt) for start in series.starts]


def rate_rows(rates: ParamRates) -> list[tuple[str, int, int]]:
    """(label, anomalies, trials) per bin, as charts.rate_bars takes them."""
    return [(b.label, b.anomalies, b.trials) for b in rates.bins]


def window_rows(rates: ParamRates) -> list[tuple[str, int, float]]:
    """(label, window entries, guest-seconds) per bin, as charts.window_bars takes them."""
    return [(b.label, b.window_entries, b.guest_seconds) for b in rates.bins]


def make_templates() -> Jinja2Templates:
    """Jinja2 with autoescape always on and the filters guest text needs."""
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every template, whatever its extension
        undefined=StrictUndefined,  # a typo in a template fails the tests, not silently
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        visible=text.visible,
        when=text.when,
        ago=text.ago,
        number=text.number,
        series_class=charts.series_class,
        path=lambda value: quote(str(value), safe=""),
    )
    env.globals.update(
        stacked_bars=charts.stacked_bars,
        rate_bars=charts.rate_bars,
        window_bars=charts.window_bars,
        query=_query_string,
        series_labels=series_labels,
        rate_rows=rate_rows,
        window_rows=window_rows,
        provenance_summary=provenance_summary,
    )
    return Jinja2Templates(env=env)


def create_app(
    database_url: str,
    *,
    web_token: str | None = None,
    cache_ttl: float = DEFAULT_TTL_S,
    engine: Engine | None = None,
    broker_url: str | None = None,
) -> FastAPI:
    """The app for one results database. ``web_token`` None refuses every mutation.

    ``broker_url`` (Redis) lets /metrics report queue depths as well.
    """
    engine = engine or db.make_engine(database_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        app.state.web.cache.close()  # background refreshes must not outlive the app

    app = FastAPI(
        lifespan=lifespan,
        title="zapfarm results",
        summary="Findings, campaigns and trials of the zap_pte_range migration-entry race farm",
        version="1",
        docs_url=None,  # Swagger UI needs inline scripts and a CDN: the CSP forbids both
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    sessions = db.session_factory(engine)
    app.state.web = WebState(
        engine=engine,
        sessions=sessions,
        web_token=web_token or None,
        cache=TTLCache(cache_ttl, sessions=sessions),
        templates=make_templates(),
    )
    app.add_middleware(SecurityHeaders)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.include_router(api.router, prefix=API_PREFIX)
    app.include_router(pages.router)
    registry = registry_for(sessions, broker_url)

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        """Prometheus text format, read from the database at scrape time (farm.web.metrics)."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    _add_error_handlers(app)
    return app


def app_from_settings(settings: Settings, cache_ttl: float = DEFAULT_TTL_S) -> FastAPI:
    return create_app(
        settings.database_url,
        web_token=settings.web_token,
        cache_ttl=cache_ttl,
        broker_url=settings.broker_url if settings.broker_url.startswith("redis") else None,
    )


def _is_api(request: Request) -> bool:
    return request.url.path.startswith(API_PREFIX + "/") or request.url.path == "/openapi.json"


def error_page(
    request: Request, status: int, message: str, headers: Mapping[str, str] | None = None
) -> Response:
    """The HTML error page, or a JSON problem under /api; ``headers`` go along (e.g. the
    ``Allow`` of a 405, which HTTP requires)."""
    headers = dict(headers or {})
    if _is_api(request):
        if status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return JSONResponse({"detail": message}, status_code=status, headers=headers)
    return state(request).templates.TemplateResponse(
        request,
        "error.html",
        {"status": status, "message": message, "nav": ""},
        status_code=status,
        headers=headers,
    )


# What to do about a validation error, where pydantic's message alone does not say
_HINTS_BY_LOC = {("query", "cursor"): "pass the next_cursor a page gave, or no cursor"}
_HINTS_BY_TYPE = {
    "json_invalid": "the body must be JSON",
    "model_attributes_type": "send a JSON object with Content-Type: application/json",
}
UNREADABLE_BODY = (
    "the body could not be read: send a JSON object encoded as UTF-8 "
    "with Content-Type: application/json"
)


def validation_problems(exc: RequestValidationError) -> list[dict[str, Any]]:
    """FastAPI's 422 detail (``loc``, ``msg``, ``type``) without the offending input.

    The input may be bytes that are not text (a body that is not JSON) or anything a
    client sent: echoing it back can fail to serialise and only repeats the request.
    """
    out = []
    for e in exc.errors()[:MAX_PROBLEMS]:
        loc = tuple(p if isinstance(p, int) else str(p) for p in e.get("loc", ()))
        kind = str(e.get("type", "value_error"))
        msg = str(e.get("msg", "invalid"))
        hint = _HINTS_BY_LOC.get(loc[:2]) or _HINTS_BY_TYPE.get(kind)
        out.append({"loc": list(loc), "msg": f"{msg}: {hint}" if hint else msg, "type": kind})
    return out


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused) -> Response:
        return error_page(request, exc.status, exc.message)

    @app.exception_handler(ActionError)
    async def action_error(request: Request, exc: ActionError) -> Response:
        return error_page(request, exc.status, exc.message)

    @app.exception_handler(QueryError)
    async def query_error(request: Request, exc: QueryError) -> Response:
        return error_page(request, 400, str(exc))

    @app.exception_handler(db.DatabaseError)
    async def database_error(request: Request, exc: db.DatabaseError) -> Response:
        return error_page(request, 503, str(exc))

    @app.exception_handler(OperationalError)
    async def operational_error(request: Request, exc: OperationalError) -> Response:
        first = str(exc.orig).strip().splitlines()[0] if exc.orig else "database error"
        return error_page(
            request,
            503,
            f"the results database failed ({first}); is it reachable and migrated "
            "(`farm db upgrade`)?",
        )

    @app.exception_handler(StarletteHTTPException)  # FastAPI's own are a subclass
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        detail = str(exc.detail)
        if exc.status_code == 400 and detail == "There was an error parsing the body":
            detail = UNREADABLE_BODY  # FastAPI's words for a body it could not decode
        return error_page(request, exc.status_code, detail, exc.headers)

    @app.exception_handler(404)
    async def not_found(request: Request, exc: Exception) -> Response:
        detail = getattr(exc, "detail", None) or "no such page"
        return error_page(request, 404, str(detail))

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> Response:
        if _is_api(request):
            return JSONResponse({"detail": validation_problems(exc)}, status_code=422)
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'][1:]) or 'request'}: {e['msg']}"
            for e in exc.errors()[:5]
        )
        return error_page(request, 400, f"bad request: {problems}")
