"""A program reproduction stored as a done campaign: rows, findings, the web, rerun."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from farm.control.program import ProgramReproduction, build, campaign_name, store
from farm.control.reproduce import Reproduction
from farm.protocol import TrialResult
from farm.store import db
from farm.store.findings import rerun
from farm.store.models import Campaign, Finding, Trial
from farm.triage.verdict import judge
from farm.web.app import create_app


def test_program_runs_land_in_a_done_campaign(db_url: str, tmp_path: Path) -> None:
    source = tmp_path / "p.c"
    source.write_text("int main(void) { return 0; }\n")
    built = build(source, tmp_path / "out")
    name = campaign_name(built)
    outcome = ProgramReproduction(
        built, ["-x"], name, tally=Reproduction(built.label, campaign=name)
    )
    now = time.time()
    runs: list[dict[str, Any]] = [
        {"outcome": "ok", "exit_code": 0, "output": "fine\n"},
        {"outcome": "program-error", "signal": int(signal.SIGBUS), "output": "oops\n"},
        {"outcome": "ok", "exit_code": 0, "console": "[ 1.0] BUG: Bad rss-counter state "
         "mm:00000000deadbeef type:MM_SHMEMPAGES val:-1\n"},
    ]  # fmt: skip
    for i, fields in enumerate(runs):
        result = TrialResult(
            trial_id=f"{name}-k-{i}", token=built.label, kernel="k", worker="w",
            started_at=now, finished_at=now + 1, elapsed_ms=5, **fields,
        )  # fmt: skip
        verdict = judge(result)
        outcome.results.append((result, verdict))
        outcome.tally.add("k", str(verdict.kind), verdict.title)
    db.upgrade(db_url)
    engine = db.make_engine(db_url)
    sessions = db.session_factory(engine)
    try:
        with sessions.begin() as session:  # the CLI runs on registered kernels only
            db.ensure_kernel(session, "k", "6.1.0", "/k/bzImage", "a" * 64, "custom")
        assert store(sessions, outcome) == name
        with sessions() as session:
            campaign = session.scalars(select(Campaign).where(Campaign.name == name)).one()
            assert campaign.status == "done" and campaign.spec["program"]["args"] == ["-x"]
            trials = list(session.scalars(select(Trial).order_by(Trial.trial_id)))
            assert [t.verdict for t in trials] == ["clean", "program-crash", "kernel-report"]
            assert {t.campaign_id for t in trials} == {campaign.id}
            assert trials[1].signal == signal.SIGBUS and trials[1].result["output"] == "oops\n"
            titles = sorted(session.scalars(select(Finding.title)))
            assert titles == ["BUG: Bad rss-counter state", "program killed by SIGBUS"]
        summary = rerun(sessions)  # re-judging keeps the foreign program's verdicts
        assert summary.rejudged == 3 and summary.changed == 0 and summary.kept == 0
        assert outcome.to_json()["kernels"]["k"]["hits"] == 2
        app = create_app(db_url, cache_ttl=0)
        with TestClient(app) as client:
            page = client.get(f"/campaigns/{name}")
            assert page.status_code == 200 and "program-crash" in page.text
            assert client.get("/api/campaigns").status_code == 200
            crashed = client.get(f"/api/trials/{trials[1].id}").json()
            assert crashed["output"] == "oops\n"
            assert crashed["reproduce_command"] == "farm reproduce --program p.c --kernel k"
            assert "Program output" in client.get(f"/trials/{trials[1].id}").text
            finding = client.get(f"/api/findings/{trials[1].finding_id}").json()
            assert finding["title"] == "program killed by SIGBUS"
            report = client.get(f"/findings/{trials[1].finding_id}").text
            assert "farm reproduce --program p.c --kernel k --runs 10" in report
        app.state.web.engine.dispose()
    finally:
        engine.dispose()
