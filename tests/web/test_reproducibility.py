"""The web's reproducibility column and `farm reproduce` agree on a hit rate.

Both count runs with farm.triage.kinds.is_run: an `invalid` trial (a guest with one
NUMA node tested nothing) and an `infra-error` are not runs, on either side.
"""

from __future__ import annotations

from pathlib import Path

from conftest import RSS_COUNTER, result_dict
from fastapi.testclient import TestClient
from sqlalchemy import select

from farm.control import campaigns
from farm.control.reproduce import Reproduction
from farm.params import SeedToken
from farm.protocol import validate_result
from farm.store import db
from farm.store.models import Campaign, Finding, Kernel, Trial
from farm.store.recorder import enqueue, record
from farm.triage.verdict import judge
from farm.web import create_app

KERNEL = "debian-6.1.0-26"
TOKEN = str(SeedToken(seed=0x5EED_0000_0000_0007))
RUNS = {  # trial suffix -> how the run ends
    "hit-0": {"console": RSS_COUNTER, "punched_kb": -4},
    "hit-1": {"console": RSS_COUNTER, "punched_kb": -4},
    "clean": {},
    "invalid": {"numa_nodes": 1},
    "infra": {"outcome": "infra-error"},
}


def _record(sessions: object, trial_id: str, finished: float, **extra: object) -> None:
    result = validate_result(result_dict(trial_id, TOKEN, KERNEL, finished=finished, **extra))
    record(sessions, result, verdict=judge(result))  # type: ignore[arg-type]


def test_web_and_farm_reproduce_count_the_same_runs_and_hits(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'farm.sqlite'}"
    db.upgrade(url)
    engine = db.make_engine(url)
    sessions = db.session_factory(engine)
    with sessions.begin() as s:
        db.ensure_kernel(s, KERNEL, "6.1.0-26-amd64", "/var/lib/zapfarm/vmlinuz", None, "debian")
    _record(sessions, "found", 1_700_000_000.0, console=RSS_COUNTER, punched_kb=-4)
    with sessions.begin() as s:
        repro = campaigns.create_reproduction(s, TOKEN, [KERNEL], runs=len(RUNS), name="repro")
        kernel = s.scalars(select(Kernel).where(Kernel.name == KERNEL)).one()
        for suffix in RUNS:
            enqueue(s, trial_id=f"repro-{suffix}", token=TOKEN, kernel=kernel, campaign=repro)
    for i, (suffix, extra) in enumerate(RUNS.items()):
        _record(sessions, f"repro-{suffix}", 1_700_000_100.0 + i, **extra)

    # what `farm reproduce` makes of the same trials
    cli = Reproduction(TOKEN)
    with sessions() as s:
        finding_id = s.scalar(select(Finding.id))
        rows = s.execute(
            select(Kernel.name, Trial.verdict, Trial.title)
            .join(Kernel, Kernel.id == Trial.kernel_id)
            .join(Campaign, Campaign.id == Trial.campaign_id)
            .where(Campaign.name == "repro")
        ).all()
    for kernel_name, verdict, title in rows:
        cli.add(kernel_name, verdict, title)
    summary = cli.to_json()
    assert (summary["hits"], summary["runs"]) == (2, 3)
    assert summary["invalid"] == 1 and summary["infra_errors"] == 1

    app = create_app(url, cache_ttl=0)
    with TestClient(app) as client:
        shown = client.get(f"/api/findings/{finding_id}").json()
        assert shown["reproducibility"]["hits"] == summary["hits"]
        assert shown["reproducibility"]["runs"] == summary["runs"]
        assert shown["reproducibility"]["label"] == "2/3"
        assert shown["reproductions"][0]["runs"] == summary["runs"]
    app.state.web.engine.dispose()
    engine.dispose()
