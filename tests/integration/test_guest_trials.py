"""Real trials: a TCG NUMA guest under libvirtd, driven through Celery over the local Redis.

One worker process and one guest boot serve the whole module (a boot costs
~15 s under TCG); the trials below run on that boot, in order.
"""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from farm.db import ensure_kernel, make_engine, session_factory, upgrade
from farm.dispatch import Dispatch, Recorded, collect
from farm.kernels import KernelImage, installed_kernel
from farm.localworker import LocalWorker
from farm.models import Trial
from farm.params import TokenError
from farm.recorder import enqueue
from farm.settings import load_settings

pytestmark = [pytest.mark.vm, pytest.mark.redis]

REPO = Path(__file__).resolve().parents[2]


def farm_domains() -> list[str]:
    out = subprocess.run(
        ["virsh", "-c", "qemu:///system", "list", "--all", "--name"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [n for n in out.split() if n.startswith("zapfarm-")]


class Farm:
    """A control plane (SQLite in tmp) and one real worker process with its guest pool."""

    def __init__(self, tmp: Path) -> None:
        self.settings = replace(load_settings(), database_url=f"sqlite:///{tmp / 'farm.sqlite'}")
        upgrade(self.settings.database_url)
        self.engine = make_engine(self.settings.database_url)
        self.sessions = session_factory(self.engine)
        self.kernel: KernelImage = installed_kernel()
        self.queue = f"zapfarm-test-{uuid.uuid4().hex[:8]}"
        self.worker = LocalWorker(self.settings, self.queue).start()
        from workers.celery_app import app

        self.app = app
        self.count = 0

    def run(self, *tokens: str, deadline_s: float = 120) -> list[Recorded]:
        dispatches = []
        with self.sessions.begin() as session:
            k = self.kernel
            kernel = ensure_kernel(session, k.name, k.release, str(k.path), k.sha256, k.source)
            for token in tokens:
                self.count += 1
                trial_id = f"{self.queue}-{self.count:03d}"
                with contextlib.suppress(TokenError):  # a bad token has no queued row
                    enqueue(session, trial_id=trial_id, token=token, kernel=kernel)
                dispatches.append(Dispatch(trial_id, token, k.name, str(k.path), deadline_s))
        done = collect(
            self.app, self.sessions, dispatches, self.queue, timeout_s=400, alive=self.worker.alive
        )
        by_id = {r.result.trial_id: r for r in done}
        return [by_id[d.trial_id] for d in dispatches]

    def close(self) -> None:
        self.worker.stop()
        self.engine.dispose()


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    farm = Farm(tmp_path_factory.mktemp("farm"))
    try:
        yield farm
    finally:
        farm.close()
    assert farm_domains() == [], "the worker left guests behind"


def test_trials_share_one_boot_and_land_in_the_database(farm: Farm) -> None:
    tokens = [
        "zf1-8188e2f542964e0c~pages=512",
        "zf1-00000000000000aa~pages=256,punch=madvise,placement=split",
    ]
    results = farm.run(*tokens)
    for rec in results:
        r = rec.result
        assert r.outcome == "ok", (r.error, r.console[-2000:])
        assert r.guest is not None and r.guest.numa_nodes == 2
        assert r.program is not None and r.program.numa_nodes == 2
        assert r.program.migrate.moved > 0  # pages really moved between the two nodes
        assert r.program.punch.calls > 0 and r.program.punch.errors == 0
        assert r.program.vma.found and r.program.vma.rss_kb == 0
        assert r.program.rss_shmem_kb.populated > r.program.rss_shmem_kb.before
        assert f"zapfarm: trial {r.trial_id} begin" in r.console
        assert f"zapfarm: trial {r.trial_id} end" in r.console
        assert "Linux version" not in r.console  # boot messages belong to the boot, not a trial
        assert rec.verdict.kind == "clean", (rec.verdict, r.console[-2000:])
    assert [r.result.booted for r in results] == [True, False]
    assert results[0].result.guest.boot_id == results[1].result.guest.boot_id
    assert results[1].result.guest.trials_on_boot == 2
    with farm.sessions() as session:
        rows = {t.trial_id: t for t in session.query(Trial).all()}
    for rec in results:
        row = rows[rec.result.trial_id]
        assert row.status == "done" and row.verdict == "clean"
        assert row.vma_rss_kb == 0 and row.numa_nodes == 2
        assert row.migrate_moved == rec.result.program.migrate.moved


def test_a_trial_past_its_deadline_is_killed_and_the_guest_goes_on(farm: Farm) -> None:
    slow = "zf1-00000000000000bb~pages=65536,rounds=4,batch=1,kick_delay_us=50"
    timed_out, after = farm.run(slow, deadline_s=2), farm.run("zf1-00000000000000cc~pages=128")[0]
    assert timed_out[0].result.outcome == "timeout", timed_out[0].result.error
    assert timed_out[0].verdict.kind == "hang"
    assert after.result.outcome == "ok" and after.verdict.kind == "clean"


def test_a_malformed_trial_is_marked_and_loses_nothing(farm: Farm) -> None:
    bad, good = farm.run("zf1-zzzz", "zf1-00000000000000dd~pages=64")
    assert bad.result.outcome == "infra-error" and "malformed" in (bad.result.error or "")
    assert good.result.outcome == "ok"
