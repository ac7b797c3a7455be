"""The results database on the web: ``farm web`` (pages for people, JSON under /api).

farm.web.app builds the FastAPI application from the routers (farm.web.api for JSON,
farm.web.pages for HTML), which take what a request needs from farm.web.deps.
farm.web.queries holds every read (one module per page), farm.web.stats the
statistics behind the charts, farm.web.actions the mutations (through
farm.control.campaigns), farm.web.charts the server-side SVG charts and
farm.web.text the escaping of guest output.
"""

from __future__ import annotations

from farm.web.app import app_from_settings, create_app

__all__ = ["app_from_settings", "create_app"]
