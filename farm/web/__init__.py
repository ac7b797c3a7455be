"""The results database on the web: ``farm web`` (pages for people, JSON under /api).

farm.web.app builds the FastAPI application, farm.web.queries holds every read,
farm.web.actions the mutations (through farm.control.campaigns), farm.web.charts the
server-side SVG charts and farm.web.text the escaping of guest output.
"""

from __future__ import annotations

from farm.web.app import app_from_settings, create_app

__all__ = ["app_from_settings", "create_app"]
