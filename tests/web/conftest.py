"""Fixtures for the web tests: a results database filled through the real recorder.

Every trial goes the way production trials go: farm.store.recorder.enqueue, then
farm.store.recorder.record with the verdict farm.triage.verdict.judge() gives its
result, so findings, counts and example trials are what the recorder makes of
them. The database is built once per test module and backend (SQLite and
PostgreSQL) to keep the web tests fast; tests that mutate use their own names.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from farm.control import campaigns
from farm.params import SeedToken
from farm.protocol import TrialResult, validate_result
from farm.store import db, models
from farm.store.models import Campaign, Finding, Kernel, Trial
from farm.store.recorder import enqueue, mark_running, record
from farm.triage.verdict import judge
from farm.web import create_app

WEB_TOKEN = "test-web-token-5f1c"
NOW = time.time()

KERNELS = {
    "debian-6.1.0-26": "6.1.0-26-amd64",
    "debian-bullseye-5.10.0-32": "5.10.0-32-amd64",
    "debian-trixie-6.12.107": "6.12.107-amd64",
}

WARNING_ZAP = (
    "[   41.502113] ------------[ cut here ]------------\n"
    "[   41.502201] WARNING: CPU: 1 PID: 245 at mm/memory.c:1435 zap_pte_range+0x4c3/0x8f0\n"
    "[   41.502377] Modules linked in:\n"
    "[   41.502420] CPU: 1 PID: 245 Comm: zapmigrate Not tainted 6.1.0-26-amd64 #1\n"
    "[   41.502533] RIP: 0010:zap_pte_range+0x4c3/0x8f0\n"
    "[   41.502601] Call Trace:\n"
    "[   41.502640]  <TASK>\n"
    "[   41.502671]  zap_pmd_range.isra.0+0x1d4/0x2a0\n"
    "[   41.502733]  unmap_page_range+0x2d9/0x6a0\n"
    "[   41.502790]  unmap_mapping_range+0x11a/0x140\n"
    "[   41.502851]  shmem_fallocate+0x4a3/0x560\n"
    "[   41.502911]  </TASK>\n"
    "[   41.502939] ---[ end trace 0000000000000000 ]---\n"
)
RSS_COUNTER = (
    "[   43.117031] BUG: Bad rss-counter state mm:000000008c8e1b3f type:MM_SHMEMPAGES val:-1\n"
)
XSS = "<script>alert(1)</script>"
HOSTILE = f"[   12.000001] BUG: {XSS} \x1b[31mred\x1b[0m\n[   12.000002] guest says {XSS}\x1b[2J\n"


def result_dict(
    trial_id: str,
    token: str,
    kernel: str,
    *,
    finished: float,
    console: str = "",
    worker: str = "host-a",
    outcome: str = "ok",
    vma_rss_kb: int = 0,
    punched_kb: int = 0,
    numa_nodes: int = 2,
    window: dict[str, int] | None = None,
) -> dict[str, Any]:
    """A realistic worker result (docs/protocol.md) as it arrives from the broker."""
    params = SeedToken.parse(token).params().to_dict()
    program = {
        "program": "zapmigrate",
        "format": 1,
        "inputs": params,
        "kernel": KERNELS.get(kernel, kernel),
        "numa_nodes": numa_nodes,
        "page_size": 4096,
        "migrate": {
            "calls": 3 * params["pages"],
            "call_errors": 0,
            "moved": 3 * params["pages"] - 9,
            "enoent": 6,
            "ebusy": 3,
            "other": 0,
            "other_errnos": {},
        },
        "punch": {"calls": params["pages"], "errors": 0},
        "vma": {"found": True, "rss_kb": vma_rss_kb, "pss_shmem_kb": vma_rss_kb},
        "rollup": {"pss_shmem_kb": 696 + vma_rss_kb},
        "rss_shmem_kb": {"before": 0, "populated": 4 * params["pages"], "punched": punched_kb},
        "timing_us": {"populate": 1200, "migrate": 1_900_000, "total": 2_050_000},
        "error": None,
    }
    data: dict[str, Any] = {
        "trial_id": trial_id,
        "token": token,
        "kernel": kernel,
        "worker": worker,
        "outcome": outcome,
        "guest": {
            "name": f"zapfarm-{worker}-0",
            "boot_id": "4f0c2e1a-77b1-4e59-9d0e-5a3c3f1f2b11",
            "kernel_release": KERNELS.get(kernel, kernel),
            "numa_nodes": numa_nodes,
            "virt_type": "qemu",
            "boot_seconds": 8.7,
            "trials_on_boot": 1,
        },
        "booted": True,
        "exit_code": 0,
        "elapsed_ms": 2134,
        "program": program,
        "window": window,
        "console": "zapfarm: trial begin\n" + console + "zapfarm: trial end\n",
        "started_at": finished - 2.2,
        "finished_at": finished,
    }
    if outcome == "infra-error":
        data.update(guest=None, program=None, exit_code=None, error="libvirt: domain vanished")
    return data


@dataclass
class Filled:
    """What the fill made, for assertions."""

    url: str
    trials: dict[str, int] = field(default_factory=dict)  # trial_id -> row id
    findings: dict[str, int] = field(default_factory=dict)  # short name -> finding id
    tokens: dict[str, str] = field(default_factory=dict)  # short name -> example token
    repro_campaign: str = ""


def _token(i: int) -> str:
    return str(SeedToken(seed=0x5EED_0000_0000_0000 + i))


def fill(sessions: sessionmaker[Session], url: str) -> Filled:
    """Kernels, campaigns and ~60 trials recorded through the real recorder."""
    out = Filled(url=url)
    with sessions.begin() as s:
        for name, release in KERNELS.items():
            db.ensure_kernel(
                s,
                name,
                release,
                f"/var/lib/zapfarm/vmlinuz-{release}",
                secrets.token_hex(32),
                "debian",
            )
        nightly = campaigns.create(
            s,
            campaigns.parse_spec(
                {
                    "name": "nightly-6.1",
                    "kernels": ["debian-6.1.0-26", "debian-bullseye-5.10.0-32"],
                    "budget": {"trials": 200},
                }
            ),
        )
        campaigns.transition(nightly, "running")
        campaigns.create(
            s,
            campaigns.parse_spec(
                {
                    "name": "sweep-5.10",
                    "kernels": ["debian-bullseye-5.10.0-32"],
                    "budget": {"trials": 50},
                    "preset": "seed-2022",
                }
            ),
        )
        for name in ("mut-a", "mut-b"):  # for the mutation tests only
            campaigns.create(
                s,
                campaigns.parse_spec(
                    {
                        "name": name,
                        "kernels": ["debian-6.1.0-26"],
                        "budget": {"trials": 10},
                    }
                ),
            )
        s.add(
            models.Worker(
                name="host-a",
                info={"slots": 2, "virt_type": "qemu", "queues": ["zapfarm.k.debian-6.1.0-26"]},
                last_seen=models.utcnow(),
            )
        )

    kinds = ["clean"] * 6 + ["warning", "rss", "clean", "smaps", "invalid", "infra", "clean", "rss"]
    kernels = list(KERNELS)
    plan: list[tuple[str, str, str, float, dict[str, Any]]] = []
    for i in range(42):
        kind = kinds[i % len(kinds)]
        kernel = kernels[i % 2]
        finished = NOW - 20 * 3600 + i * 1500  # spread over the last 20 hours
        extra: dict[str, Any] = {"worker": "host-a" if i % 3 else "host-b"}
        if kind == "warning":  # a count build's window counters ride along
            extra["console"] = WARNING_ZAP
            extra["window"] = {
                "entries": 12 + i,
                "skipped": 3,
                "swap_entries": 1,
                "swap_skipped": 0,
            }
        elif kind == "rss":
            extra.update(console=RSS_COUNTER, punched_kb=-4)
        elif kind == "smaps":
            extra["vma_rss_kb"] = 4
        elif kind == "invalid":
            extra["numa_nodes"] = 1
        elif kind == "infra":
            extra["outcome"] = "infra-error"
        plan.append((f"nightly-{i:04d}", _token(i), kernel, finished, extra))
    with sessions.begin() as s:
        nightly = s.scalars(select(Campaign).where(Campaign.name == "nightly-6.1")).one()
        by_name = {k.name: k for k in s.scalars(select(Kernel))}
        for trial_id, token, kernel, _, _ in plan:
            enqueue(s, trial_id=trial_id, token=token, kernel=by_name[kernel], campaign=nightly)
        for j, trial_id in enumerate(("nightly-q0", "nightly-q1", "nightly-run")):
            enqueue(
                s,
                trial_id=trial_id,
                token=_token(100 + j),
                kernel=by_name[kernels[0]],
                campaign=nightly,
            )
        mark_running(s, "nightly-run", "host-a")
    for trial_id, token, kernel, finished, extra in plan:
        _record(sessions, result_dict(trial_id, token, kernel, finished=finished, **extra))
    # a hostile guest, outside any campaign (the recorder registers it as it comes)
    _record(
        sessions,
        result_dict(
            "adhoc-xss", _token(200), "debian-6.1.0-26", finished=NOW - 600, console=HOSTILE
        ),
    )

    with sessions() as s:
        for f in s.scalars(select(Finding)):
            short = (
                "warning"
                if "zap_pte_range" in f.title
                else "rss"
                if "rss-counter" in f.title
                else "xss"
                if "script" in f.title
                else f.kind
            )
            out.findings[short] = f.id
            out.tokens[short] = s.scalar(select(Trial.token).where(Trial.id == f.example_trial_id))
        out.trials = {tid: pk for tid, pk in s.execute(select(Trial.trial_id, Trial.id))}

    # a reproduction of the rss finding's best seed: 3 of 4 runs hit it
    with sessions.begin() as s:
        repro = campaigns.create_reproduction(
            s, out.tokens["rss"], ["debian-6.1.0-26"], runs=4, name="repro-rss"
        )
        out.repro_campaign = repro.name
        k = s.scalars(select(Kernel).where(Kernel.name == "debian-6.1.0-26")).one()
        for r in range(4):
            enqueue(s, trial_id=f"repro-rss-{r}", token=out.tokens["rss"], kernel=k, campaign=repro)
    for r in range(4):
        hit = r < 3
        _record(
            sessions,
            result_dict(
                f"repro-rss-{r}",
                out.tokens["rss"],
                "debian-6.1.0-26",
                finished=NOW - 300 + r,
                console=RSS_COUNTER if hit else "",
                punched_kb=-4 if hit else 0,
            ),
        )
    with sessions() as s:
        out.trials = {tid: pk for tid, pk in s.execute(select(Trial.trial_id, Trial.id))}
    return out


def _record(sessions: sessionmaker[Session], data: dict[str, Any]) -> None:
    result: TrialResult = validate_result(data)
    record(sessions, result, verdict=judge(result))


def _postgres_db(admin_url: str) -> Iterator[str]:
    name = f"zapfarm_web_{secrets.token_hex(5)}"
    admin = db.make_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def web_db(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Filled]:
    """A migrated database on each backend, filled by fill(); one per test module."""
    if request.param == "sqlite":
        urls: Iterator[str] = iter([f"sqlite:///{tmp_path_factory.mktemp('web') / 'farm.sqlite'}"])
    else:
        urls = _postgres_db(request.getfixturevalue("postgres_admin_url"))
    url = next(urls)
    try:
        db.upgrade(url)
        engine = db.make_engine(url)
        try:
            yield fill(db.session_factory(engine), url)
        finally:
            engine.dispose()
    finally:
        next(urls, None)  # drops the PostgreSQL database


@pytest.fixture(scope="module")
def client(web_db: Filled) -> Iterator[TestClient]:
    """The app on web_db with a web token and no aggregate cache (tests see every change)."""
    app = create_app(web_db.url, web_token=WEB_TOKEN, cache_ttl=0)
    with TestClient(app) as c:
        yield c
    app.state.web.engine.dispose()


@pytest.fixture
def sqlite_file(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'farm.sqlite'}"
