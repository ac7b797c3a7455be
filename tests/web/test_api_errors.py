"""Inputs that used to get a 500 (or an undocumented answer) get a documented 4xx naming the fix.

One test per defect the property-based run (test_api_properties.py) found, on both
backends. The client re-raises server exceptions, so a 500 fails loudly here.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import WEB_TOKEN, Filled
from fastapi.testclient import TestClient

from farm.web import create_app
from farm.web.app import UNREADABLE_BODY

AUTH = {"Authorization": f"Bearer {WEB_TOKEN}"}
HUGE = 2**64  # beyond SQLite's integer binding
BIG = 2**31  # beyond PostgreSQL's INTEGER (findings' ids)


def _problem(response: Any, status: int) -> str:
    assert response.status_code == status, (response.status_code, response.text[:300])
    detail = response.json()["detail"]
    return detail if isinstance(detail, str) else " ".join(str(d["msg"]) for d in detail)


@pytest.mark.parametrize(
    "path",
    [
        f"/api/findings?page={HUGE}",
        f"/api/findings?per_page={HUGE}",
        f"/api/campaigns?page={HUGE}",
        f"/api/campaigns?per_page={HUGE}",
        f"/api/findings/{HUGE}",
        f"/api/findings/{BIG}",
        f"/api/findings/{BIG}/trials",
        f"/api/trials/{HUGE}",
        f"/api/trials?finding={BIG}",
    ],
)
def test_numbers_beyond_what_the_database_holds_get_422_naming_the_limit(
    client: TestClient, path: str
) -> None:
    assert "less than or equal to" in _problem(client.get(path), 422)


def test_largest_ids_the_database_holds_are_just_missing(client: TestClient) -> None:
    assert _problem(client.get(f"/api/findings/{BIG - 1}"), 404) == f"no finding {BIG - 1}"
    assert client.get(f"/api/findings/{BIG - 1}/trials").json()["items"] == []
    assert _problem(client.get(f"/api/trials/{2**63 - 1}"), 404) == f"no trial {2**63 - 1}"
    assert client.get("/api/findings", params={"page": 1_000_000}).json()["items"] == []


@pytest.mark.parametrize(
    "path",
    [f"/findings?page={HUGE}", f"/findings/{HUGE}", f"/trials/{HUGE}", f"/trials?finding={BIG}"],
)
def test_pages_refuse_huge_numbers_with_400(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 400
    assert "less than or equal to" in response.text


def test_a_body_that_is_not_json_gets_a_problem_naming_json(client: TestClient) -> None:
    for content_type, body in [
        ("application/json", b"not json"),
        ("text/plain", b'{"finding_id": 1}'),
        ("application/x-www-form-urlencoded", b"token=zf2-8188e2f542964e0c"),
    ]:
        response = client.post(
            "/api/reproductions", content=body, headers={**AUTH, "content-type": content_type}
        )
        assert "JSON" in _problem(response, 422)
    undecodable = client.post(
        "/api/reproductions",
        content=b"\xff\xfe{",
        headers={**AUTH, "content-type": "application/json"},
    )
    assert _problem(undecodable, 400) == UNREADABLE_BODY


def test_a_malformed_override_value_is_a_400_naming_the_syntax(
    client: TestClient, web_db: Filled
) -> None:
    body = {"token": "zf2-8188e2f542964e0c~pages=--5", "kernels": ["debian-6.1.0-26"]}
    message = _problem(client.post("/api/reproductions", json=body, headers=AUTH), 400)
    # the bad value and what the knob means (it was a bare ValueError: a 500)
    assert "pages='--5'" in message and "buffer size in pages" in message


def test_a_cursor_is_accepted_by_every_list_and_a_malformed_one_names_the_fix(
    client: TestClient,
) -> None:
    queued = client.get("/api/trials", params={"status": "queued", "limit": 1}).json()
    cursor = queued["next_cursor"]
    assert cursor is not None  # two queued trials, one per page
    older = client.get("/api/trials", params={"status": "queued", "cursor": cursor}).json()
    assert [t["id"] for t in older["items"]] != [t["id"] for t in queued["items"]]
    done = client.get("/api/trials", params={"cursor": cursor})  # the done list takes it too
    assert done.status_code == 200
    message = _problem(client.get("/api/trials", params={"cursor": "i5"}), 422)
    assert "next_cursor" in message
    assert client.get("/trials", params={"cursor": "garbage"}).status_code == 400


def test_text_no_database_can_hold_matches_nothing(client: TestClient) -> None:
    text = "a\x00b"  # PostgreSQL refuses NUL in text
    for name in ("campaign", "kernel", "verdict", "token"):
        response = client.get("/api/trials", params={name: text})
        assert response.status_code == 200 and response.json()["items"] == [], name
    for name in ("kind", "kernel", "q"):
        response = client.get("/api/findings", params={name: text})
        assert response.status_code == 200 and response.json()["total"] == 0, name
    assert client.get("/findings", params={"kind": text}).status_code == 200
    assert client.get("/campaigns", params={"status": text}).status_code == 200
    assert _problem(client.get("/api/campaigns/a%00b"), 404)
    post = client.post("/api/campaigns/a%00b/pause", headers=AUTH)
    assert _problem(post, 404)
    for kernel in (text, "\ud800"):  # a lone surrogate only JSON can carry; no backend stores it
        body = json.dumps({"token": "zf2-8188e2f542964e0c", "kernels": [kernel]})  # ASCII: escaped
        headers = {**AUTH, "content-type": "application/json"}
        response = client.post("/api/reproductions", content=body.encode(), headers=headers)
        message = _problem(response, 400)
        assert "farm kernels list" in message


def test_an_unreachable_database_is_a_documented_503(client: TestClient, sqlite_file: str) -> None:
    app = create_app(sqlite_file)  # never migrated: no tables
    with TestClient(app) as bare:
        assert "farm db upgrade" in _problem(bare.get("/api/findings"), 503)
    app.state.web.engine.dispose()
    doc = client.get("/openapi.json").json()
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            assert "503" in operation["responses"], (method, path)


def test_an_undeclared_method_gets_405_with_the_allowed_ones(client: TestClient) -> None:
    response = client.request("TRACE", "/api/campaigns")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET"  # RFC 9110 requires it
