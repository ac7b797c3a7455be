"""Mutations need the web token and go through farm.control.campaigns; both backends."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import WEB_TOKEN, Filled
from fastapi.testclient import TestClient
from sqlalchemy import select

from farm.store import db
from farm.store.models import Campaign
from farm.web import create_app


@pytest.fixture(scope="module")
def no_token_client(web_db: Filled) -> Iterator[TestClient]:
    """The same database served without a web token: every mutation is refused."""
    app = create_app(web_db.url, web_token=None, cache_ttl=0)
    with TestClient(app) as c:
        yield c
    app.state.web.engine.dispose()


def _campaign(web_db: Filled, name: str) -> Campaign | None:
    engine = db.make_engine(web_db.url)
    try:
        with db.session_factory(engine)() as s:
            return s.scalars(select(Campaign).where(Campaign.name == name)).one_or_none()
    finally:
        engine.dispose()


def _status(web_db: Filled, name: str) -> str | None:
    campaign = _campaign(web_db, name)
    return campaign.status if campaign else None


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_refused_when_no_token_is_configured(no_token_client: TestClient, web_db: Filled) -> None:
    api = no_token_client.post("/api/campaigns/mut-a/start", headers=_bearer("anything"))
    assert api.status_code == 403 and "FARM_WEB_TOKEN" in api.json()["detail"]
    form = no_token_client.post(
        "/campaigns/mut-a/action", data={"action": "start", "web_token": "anything"}
    )
    assert form.status_code == 403 and "FARM_WEB_TOKEN" in form.text
    repro = no_token_client.post(
        "/api/reproductions", json={"finding_id": web_db.findings["rss"]}, headers=_bearer("x")
    )
    assert repro.status_code == 403
    page = no_token_client.get(f"/findings/{web_db.findings['rss']}").text
    assert "changes are refused" in page  # the form says why before anyone tries
    assert _status(web_db, "mut-a") == "created"


def test_refused_without_or_with_a_wrong_token(client: TestClient, web_db: Filled) -> None:
    missing = client.post("/api/campaigns/mut-a/start")
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    wrong = client.post("/api/campaigns/mut-a/start", headers=_bearer(WEB_TOKEN + "x"))
    assert wrong.status_code == 401 and wrong.json()["detail"] == "wrong web token"
    basic = client.post("/api/campaigns/mut-a/start", headers={"Authorization": "Basic eDp5"})
    assert basic.status_code == 401
    form = client.post("/campaigns/mut-a/action", data={"action": "start", "web_token": "nope"})
    assert form.status_code == 401 and "wrong web token" in form.text
    empty = client.post("/campaigns/mut-a/action", data={"action": "start"})
    assert empty.status_code == 401
    repro = client.post("/api/reproductions", json={"finding_id": web_db.findings["rss"]})
    assert repro.status_code == 401
    form_repro = client.post(
        f"/findings/{web_db.findings['rss']}/reproduce", data={"web_token": "nope"}
    )
    assert form_repro.status_code == 401
    assert _status(web_db, "mut-a") == "created"


def test_campaign_actions_follow_the_state_machine(client: TestClient, web_db: Filled) -> None:
    auth = _bearer(WEB_TOKEN)
    for action, status in (("start", "running"), ("pause", "paused"), ("resume", "running")):
        response = client.post(f"/api/campaigns/mut-a/{action}", headers=auth)
        assert response.status_code == 200, response.text
        assert response.json()["campaign"]["status"] == status
        assert _status(web_db, "mut-a") == status
    assert client.post("/api/campaigns/mut-a/stop", headers=auth).status_code == 200
    campaign = _campaign(web_db, "mut-a")
    assert campaign is not None and campaign.status == "stopped" and campaign.finished_at
    again = client.post("/api/campaigns/mut-a/start", headers=auth)
    assert again.status_code == 409 and "stopped" in again.json()["detail"]
    assert client.post("/api/campaigns/no-such/start", headers=auth).status_code == 404
    assert client.post("/api/campaigns/mut-b/explode", headers=auth).status_code == 422


def test_campaign_form_redirects_to_the_changed_campaign(
    client: TestClient, web_db: Filled
) -> None:
    response = client.post(
        "/campaigns/mut-b/action",
        data={"action": "start", "web_token": WEB_TOKEN},
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/campaigns/mut-b?done=start"
    assert _status(web_db, "mut-b") == "running"
    page = client.get(response.headers["location"]).text
    assert "Campaign started." in page and 'value="pause"' in page
    bad = client.post("/campaigns/mut-b/action", data={"action": "start", "web_token": WEB_TOKEN})
    assert bad.status_code == 200 or bad.status_code == 409  # running -> running is a no-op
    odd = client.post("/campaigns/mut-b/action", data={"action": "rm -rf", "web_token": WEB_TOKEN})
    assert odd.status_code == 400


def test_reproduction_through_the_api(client: TestClient, web_db: Filled) -> None:
    auth = _bearer(WEB_TOKEN)
    finding = web_db.findings["warning"]
    response = client.post(
        "/api/reproductions", json={"finding_id": finding, "runs": 3}, headers=auth
    )
    assert response.status_code == 201, response.text
    made = response.json()["campaign"]
    assert made["kind"] == "reproduce" and made["status"] == "running"
    assert made["token"] == web_db.tokens["warning"]
    assert made["kernels"] == ["debian-6.1.0-26"]  # where the finding was seen
    assert made["budget_trials"] == 3
    stored = _campaign(web_db, made["name"])
    assert stored is not None and stored.spec["kind"] == "reproduce"
    # the same seed again within the second: a second campaign, not a name clash
    again = client.post(
        "/api/reproductions",
        json={
            "token": web_db.tokens["warning"],
            "kernels": ["debian-6.1.0-26", "debian-trixie-6.12.107"],
            "runs": 2,
        },
        headers=auth,
    )
    assert again.status_code == 201 and again.json()["campaign"]["name"] != made["name"]
    assert again.json()["campaign"]["budget_trials"] == 4
    listed = client.get(f"/api/findings/{finding}").json()
    assert listed["reproducibility"]["pending"] == 7
    assert {r["campaign"] for r in listed["reproductions"]} == {
        made["name"],
        again.json()["campaign"]["name"],
    }
    for body, status in (
        ({"token": "zf1-nothex"}, 400),
        ({"token": web_db.tokens["warning"], "kernels": ["no-such-kernel"]}, 400),
        ({"token": web_db.tokens["warning"]}, 400),  # no kernels given, no finding to pick them
        ({"finding_id": 999999}, 404),
        ({}, 400),
        ({"finding_id": finding, "runs": 0}, 422),
    ):
        response = client.post("/api/reproductions", json=body, headers=auth)
        assert response.status_code == status, (body, response.text)


def test_reproduction_through_the_form(client: TestClient, web_db: Filled) -> None:
    finding = web_db.findings["smaps-mismatch"]
    response = client.post(
        f"/findings/{finding}/reproduce",
        data={"web_token": WEB_TOKEN, "kernels": ["debian-bullseye-5.10.0-32"], "runs": "5"},
        follow_redirects=False,
    )
    assert response.status_code == 303
    location = response.headers["location"]
    assert location.startswith("/campaigns/repro-") and location.endswith("?done=reproduce")
    page = client.get(location).text
    assert "Reproduction queued" in page and web_db.tokens["smaps-mismatch"] in page
    name = location.split("/")[2].split("?")[0]
    stored = _campaign(web_db, name)
    assert stored is not None and stored.status == "running"
    assert stored.spec["budget"]["trials"] == 5
    assert stored.spec["kernels"] == ["debian-bullseye-5.10.0-32"]
    assert "pending" in client.get("/findings").text  # its repro column now says so
