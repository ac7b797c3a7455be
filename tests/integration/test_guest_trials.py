"""Real trials: a TCG NUMA guest under libvirtd, driven through Celery over the local Redis.

One worker process and one guest boot serve the whole module (a boot costs
~15 s under TCG); the trials below run on that boot, in order.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import select

from farm.artifacts.kernels import KernelImage, installed_kernel
from farm.control import campaigns
from farm.control.localworker import LocalWorker
from farm.control.scheduler import Scheduler
from farm.protocol import TrialResult
from farm.settings import load_settings
from farm.store.db import ensure_kernel, make_engine, session_factory, upgrade
from farm.store.models import Trial
from farm.triage.verdict import judge
from workers.host import worker_queues

pytestmark = [pytest.mark.vm, pytest.mark.redis]

REPO = Path(__file__).resolve().parents[2]
# short enough for the last test to watch the worker shut its guest down, long
# enough that no gap between two trials of one test comes near it
IDLE_S = 30


class Farm:
    """A control plane (SQLite in tmp), its scheduler, and one real worker process."""

    def __init__(self, tmp: Path) -> None:
        self.settings = replace(
            load_settings(), database_url=f"sqlite:///{tmp / 'farm.sqlite'}", guest_idle_s=IDLE_S
        )
        upgrade(self.settings.database_url)
        self.engine = make_engine(self.settings.database_url)
        self.sessions = session_factory(self.engine)
        self.kernel: KernelImage = installed_kernel()
        self.worker = LocalWorker(self.settings, worker_queues([self.kernel.name])).start()
        from workers.celery_app import app

        self.app = app
        self.count = 0
        self.others: frozenset[str] = frozenset()  # guests on this host that are not ours

    def run(
        self, *tokens: str, deadline_s: float = 120, cap_s: float | None = None
    ) -> list[TrialResult]:
        """Each token once, as reproduction campaigns through the scheduler; results in order."""
        names = []
        with self.sessions.begin() as session:
            k = self.kernel
            ensure_kernel(session, k.name, k.release, str(k.path), k.sha256, k.source)
            for token in tokens:
                self.count += 1
                name = f"t{uuid.uuid4().hex[:6]}-{self.count}"
                campaigns.create_reproduction(session, token, [k.name], runs=1, name=name)
                names.append(name)
        results: dict[str, TrialResult] = {}
        scheduler = Scheduler(
            self.app,
            self.sessions,
            batch_size=1,
            deadline_s=deadline_s,
            deadline_cap_s=cap_s,
            on_record=lambda r, v: results.__setitem__(r.trial_id.rsplit("-", 1)[0], r),
        )
        give_up = time.monotonic() + 400
        scheduler.run(
            stop=lambda: (
                len(results) == len(names) or not self.worker.alive() or time.monotonic() > give_up
            )
        )
        assert self.worker.alive(), self.worker.log_tail()
        return [results[name] for name in names]

    def verdict(self, trial_id: str) -> str | None:
        with self.sessions() as session:
            return session.scalars(select(Trial.verdict).where(Trial.trial_id == trial_id)).one()

    def close(self) -> None:
        self.worker.stop()
        self.engine.dispose()


@pytest.fixture(scope="module")
def farm(
    tmp_path_factory: pytest.TempPathFactory, farm_domains: Callable[..., list[str]]
) -> Iterator[Farm]:
    before = frozenset(farm_domains(settle=0))
    farm = Farm(tmp_path_factory.mktemp("farm"))
    farm.others = before
    try:
        yield farm
    finally:
        farm.close()
    assert farm_domains(ignore=before) == [], "the worker left guests behind"


def test_trials_share_one_boot_and_land_in_the_database(farm: Farm) -> None:
    tokens = [
        "zf1-8188e2f542964e0c~pages=512",
        "zf1-00000000000000aa~pages=256,placement=split,punch=madvise",
    ]
    results = farm.run(*tokens)
    for r in results:
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
        assert judge(r).kind == "clean", (judge(r), r.console[-2000:])
    assert [r.token for r in results] == tokens
    assert [r.booted for r in results] == [True, False]
    assert results[0].guest.boot_id == results[1].guest.boot_id
    assert results[1].guest.trials_on_boot == 2
    with farm.sessions() as session:
        rows = {t.trial_id: t for t in session.query(Trial).all()}
    for r in results:
        row = rows[r.trial_id]
        assert row.status == "done" and row.verdict == "clean"
        assert row.vma_rss_kb == 0 and row.numa_nodes == 2
        assert row.migrate_moved == r.program.migrate.moved


def test_a_trial_past_its_deadline_that_still_progresses_is_slow_not_hung(farm: Farm) -> None:
    """A 2 s deadline (capped by hand: the cost model would give minutes) on a long trial:
    the agent kills it while its CPU time still rises, so it is slow (invalid), not a hang,
    and the guest goes on."""
    slow = "zf1-00000000000000bb~batch=1,kick_delay_us=50,pages=65536,rounds=4"
    [killed] = farm.run(slow, deadline_s=2, cap_s=2)
    [after] = farm.run("zf1-00000000000000cc~pages=128")
    assert killed.outcome == "slow", killed.error
    assert "still making progress" in (killed.error or "")
    assert farm.verdict(killed.trial_id) == "invalid"
    assert after.outcome == "ok" and farm.verdict(after.trial_id) == "clean"
    assert not after.booted  # a slow trial does not taint its guest


def test_vm_level_knobs_reach_the_running_guest(farm: Farm) -> None:
    """A v2 token's vCPU quota and pinning are applied to the guest, not only to the program."""
    import libvirt

    [r] = farm.run("zf2-00000000000000ee~cpu_quota_pct=25,pages=256,pressure_mb=32,vcpu_pin=same")
    assert r.outcome == "ok", r.error
    assert r.program is not None and r.program.inputs["pressure_mb"] == 32
    conn = libvirt.open("qemu:///system")
    try:
        dom = conn.lookupByName(r.guest.name)
        assert dom.schedulerParameters()["vcpu_quota"] == 25_000
        assert all(cpus == (True,) + (False,) * (len(cpus) - 1) for cpus in dom.vcpuPinInfo())
    finally:
        conn.close()


def test_scenarios_on_the_installed_kernel_swap_on_zram_and_check_every_page(farm: Farm) -> None:
    """v3 scenarios in a real guest: the agent loaded zram from the image and put swap on it."""
    tokens = [
        "zf3-00000000000000d1~mover=move_pages,pages=256,rounds=2,scenario=swapped-private-truncate",
        "zf3-00000000000000d2~mover=mbind,pages=256,rounds=1,scenario=private-punch",
        "zf3-00000000000000d3~mover=move_pages,pages=256,rounds=2,scenario=shared-truncate",
    ]
    results = farm.run(*tokens)
    for r in results:
        assert r.outcome == "ok", (r.error, r.console[-2000:])
        program = r.program
        assert program is not None and program.error is None, program and program.error
        assert program.swap is not None and program.swap.total_kb > 0  # zram swap is on
        assert program.data is not None and program.data.mismatches == 0
        rounds = int(program.inputs["rounds"])
        phases = 2 if "truncate" in program.scenario else 1
        assert program.data.checked == 256 * rounds * phases
        assert program.proxy is not None and program.migrate.moved > 0
        assert judge(r).kind == "clean", (judge(r), r.console[-2000:])
    swapped = results[0].program
    assert swapped is not None and swapped.swap is not None
    assert swapped.swap.paged_out_kb == 256 * 4  # every page went to swap before the race
    punched = results[1].program
    assert punched is not None and punched.vma.anon_kb == 128 * 4  # COWs survive a hole punch


def test_an_unused_guest_is_shut_down_and_the_next_trial_gets_a_new_one(
    farm: Farm, farm_domains: Callable[..., list[str]]
) -> None:
    """Last in the module: the worker stops paying for a guest nobody uses (guest_idle_s)."""
    [r] = farm.run("zf1-00000000000000ab~pages=128")
    assert r.outcome == "ok", r.error
    assert r.guest is not None and r.guest.name in farm_domains(settle=0, ignore=farm.others)
    # unused for IDLE_S, then the worker's idle thread (every IDLE_S / 4) shuts it down
    left = farm_domains(settle=IDLE_S + IDLE_S / 4 + 60, ignore=farm.others)
    assert r.guest.name not in left, farm.worker.log_tail()
    assert farm.worker.alive(), farm.worker.log_tail()
    assert f"shut down the guest of kernel {farm.kernel.name}" in farm.worker.log_tail(200)
    [again] = farm.run("zf1-00000000000000ac~pages=128")
    assert again.outcome == "ok" and farm.verdict(again.trial_id) == "clean", again.error
    assert again.booted and again.guest is not None and again.guest.boot_id != r.guest.boot_id
