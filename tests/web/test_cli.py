"""`farm web`: refuses an unmigrated database, serves a migrated one with the settings' token."""

from __future__ import annotations

from typing import Any

import pytest
import uvicorn
from click.testing import CliRunner
from fastapi import FastAPI

from farm.cli.web import web
from farm.store import db


def test_unmigrated_database_names_the_fix(
    sqlite_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FARM_DATABASE_URL", sqlite_file)
    result = CliRunner().invoke(web, [], obj={})
    assert result.exit_code == 2
    assert "farm db upgrade" in result.output


def test_serves_with_host_port_and_token(sqlite_file: str, monkeypatch: pytest.MonkeyPatch) -> None:
    db.upgrade(sqlite_file)
    monkeypatch.setenv("FARM_DATABASE_URL", sqlite_file)
    monkeypatch.setenv("FARM_WEB_TOKEN", "from-the-environment")
    served: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.update(app=app, **kw))
    result = CliRunner().invoke(web, ["--host", "0.0.0.0", "--port", "9123"], obj={})
    assert result.exit_code == 0, result.output
    assert isinstance(served["app"], FastAPI)
    assert (served["host"], served["port"]) == ("0.0.0.0", 9123)
    assert served["app"].state.web.web_token == "from-the-environment"
    assert "no web token" not in result.output
    served["app"].state.web.engine.dispose()
