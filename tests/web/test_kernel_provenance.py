"""A built kernel's provenance on the kernels page and in /api/kernels."""

from __future__ import annotations

from fastapi.testclient import TestClient

from farm.store import db
from farm.web.app import create_app

PROV = {
    "source": "linux-source-6.1 6.1.192-3",
    "instrumentation": "warn",
    "revert_fix": False,
    "patches": [
        {"name": "patches/warn/6.1/0001-warn.patch", "sha256": "1" * 64, "origin": "farm"},
        {"name": "0001-<my>-fix.patch", "sha256": "ab12cd34ef56" + "0" * 52, "origin": "user"},
    ],
    "config_base": "tinyconfig",
}


def test_kernels_page_and_api_show_provenance(sqlite_file: str) -> None:
    db.upgrade(sqlite_file)
    engine = db.make_engine(sqlite_file)
    with db.session_factory(engine).begin() as session:
        db.ensure_kernel(session, "build-6.1-warn-patched-1234abcd", "6.1.192", "/k/bzImage",
                         "f" * 64, "build:linux-source-6.1", provenance=PROV)  # fmt: skip
        db.ensure_kernel(session, "debian-6.1", "6.1.0-26-amd64", "/k/vmlinuz", "e" * 64,
                         "debian:bookworm")  # fmt: skip
    engine.dispose()
    app = create_app(sqlite_file, cache_ttl=0)
    with TestClient(app) as client:
        api = {k["name"]: k for k in client.get("/api/kernels").json()}
        assert api["build-6.1-warn-patched-1234abcd"]["provenance"] == PROV
        assert api["debian-6.1"]["provenance"] is None
        page = client.get("/kernels").text
    app.state.web.engine.dispose()
    # one line per kernel: source, instrumentation, each patch with a short sha256, user marked
    assert "linux-source-6.1 6.1.192-3; instrument warn; 0001-warn.patch 111111111111;" in page
    assert "0001-&lt;my&gt;-fix.patch ab12cd34ef56 (user)" in page  # escaped
