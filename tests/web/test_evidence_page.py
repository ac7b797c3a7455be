"""The evidence page and API on both backends, against the trials the fill recorded."""

from __future__ import annotations

from conftest import XSS, Filled
from fastapi.testclient import TestClient
from sqlalchemy import select

from farm.params import SeedToken
from farm.store import db
from farm.store.models import Kernel, Trial
from farm.triage.kinds import is_damage, is_run


def _stored(url: str) -> list[tuple[str, str, str | None, str]]:
    engine = db.make_engine(url)
    try:
        with db.session_factory(engine)() as s:
            rows = s.execute(
                select(Kernel.name, Trial.verdict, Trial.title, Trial.token).join(
                    Kernel, Trial.kernel_id == Kernel.id
                )
            )
            return [(k, v, t, tok) for k, v, t, tok in rows if v]
    finally:
        engine.dispose()


def test_api_counts_every_tested_trial_and_every_damage(client: TestClient, web_db: Filled) -> None:
    stored = _stored(web_db.url)
    rows = client.get("/api/evidence").json()
    assert sum(r["trials"] for r in rows) == sum(is_run(v) for _, v, _, _ in stored)
    damaged = [(k, tok) for k, v, t, tok in stored if is_damage(v, t)]
    assert damaged, "the fill records counter mismatches: damage"
    assert sum(r["damage_trials"] for r in rows) == len(damaged)
    for row in rows:
        for d in row["damage"]:
            assert (row["kernel"], d["token"]) in damaged
            SeedToken.parse(d["token"])  # reproducible from the table alone
        if row["damage_trials"]:
            assert row["bound_per_trial_95"] is None
        else:
            assert row["bound_per_trial_95"] == 3 / row["trials"]


def test_kernel_filter_and_unstorable_names(client: TestClient, web_db: Filled) -> None:
    every = client.get("/api/evidence").json()
    kernel = every[0]["kernel"]
    only = client.get("/api/evidence", params={"kernel": kernel}).json()
    assert only and {r["kernel"] for r in only} == {kernel}
    assert client.get("/api/evidence", params={"kernel": "no-such-kernel"}).json() == []
    assert client.get("/api/evidence", params={"kernel": "a\x00b"}).json() == []


def test_page_shows_the_table_escaped(client: TestClient, web_db: Filled) -> None:
    page = client.get("/evidence")
    assert page.status_code == 200
    assert "Evidence: lasting damage per kernel and scenario" in page.text
    for row in client.get("/api/evidence").json():
        assert row["kernel"] in page.text
    assert XSS not in page.text
