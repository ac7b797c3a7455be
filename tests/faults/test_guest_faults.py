"""Faults of the data plane with real TCG guests: a killed worker, a hung and a panicking guest.

One control plane (SQLite in tmp, the scheduler in this process, the shared test
Redis) and one libvirt worker process serve the module; the SIGKILL test adds a
second worker for the redelivery. The faults are real:

- SIGKILL of the pool process running a trial: Celery's parent sees the child
  die (WorkerLostError) and, with acks_late + reject_on_worker_lost, requeues
  the message at once (no visibility timeout involved); the killed process's
  libvirt connection closes and AUTODESTROY takes its booted guest (a guest
  restored from a memory image goes with its guardian, workers/vm.py);
- a hung guest: SIGSTOP of its QEMU process mid-trial (no heartbeat, no
  console: the guest stopped making progress);
- a slow guest: a vCPU quota of 15 % stretches a trial far past the scheduler's
  deadline floor; its heartbeats say it progresses, so it is not a hang;
- a libvirtd restart mid-trial: the worker asks libvirt before blaming the
  kernel, records an infra error, reconnects, and the scheduler retries;
- a guest kernel panic: an uncorrected machine check with "processor context
  corrupt" injected through the QEMU monitor (``mce``), which the guest kernel
  answers with "Kernel panic - not syncing: Fatal local machine check"; with
  ``panic=-1`` and ``on_reboot=destroy`` the domain is gone a moment later.

Each test prints in flight / recorded / duplicates / lost (and reruns).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from celery import Celery
from private_services import RedisServer, in_flight, runs_per_trial, tally, wait_for

from farm.artifacts.kernels import installed_kernel
from farm.control import campaigns
from farm.control.localworker import LocalWorker
from farm.control.scheduler import Scheduler
from farm.protocol import TrialResult
from farm.settings import load_settings
from farm.store.db import ensure_kernel, make_engine, session_factory, upgrade
from farm.timing import NO_PROGRESS_S
from workers.host import worker_queues
from workers.snapshot import owner_pid

pytestmark = [pytest.mark.faults, pytest.mark.vm, pytest.mark.redis]

# ~6 s and ~10 s trials under TCG here (seed bb: one evictor, single-page migrations)
SLOW = "zf1-00000000000000bb~batch=1,kick_delay_us=50,pages=4096,rounds=2"
SLOWER = "zf1-00000000000000bb~batch=1,kick_delay_us=50,pages=4096,rounds=4"
QUICK = "zf1-00000000000000cc~pages=128"
LIBVIRT_KILL_S = 15  # libvirt destroys a QEMU that ignores SIGTERM with SIGKILL after 10 s
BOOT_S = 240  # TCG boots: ~13 s idle, measured 85-90 s on a host 7x oversubscribed
MCE_PANIC = "mce 0 0 0xb200000000000000 0x4 0 0"  # bank 0: VAL|UC|EN|PCC, MCG_STATUS=MCIP


class GuestFarm:
    """A control plane in this process and real libvirt worker processes."""

    def __init__(self, tmp: Path, redis: RedisServer) -> None:
        self.tmp = tmp
        self.settings = replace(
            load_settings(),
            database_url=f"sqlite:///{tmp / 'farm.sqlite'}",
            broker_url=redis.url(0),
            result_backend=redis.url(1),
            boot_deadline_s=BOOT_S,
        )
        upgrade(self.settings.database_url)
        self.engine = make_engine(self.settings.database_url)
        self.sessions = session_factory(self.engine)
        self.kernel = installed_kernel()
        with self.sessions.begin() as session:
            k = self.kernel
            ensure_kernel(session, k.name, k.release, str(k.path), k.sha256, k.source)
        self.workers: list[LocalWorker] = []
        self.add_worker()
        self.app = Celery("zapfarm", broker=redis.url(0), backend=redis.url(1))
        self.app.config_from_object("farm.celeryconfig")
        self.domains: set[str] = set()  # every guest these workers were seen to run
        self.results: dict[str, TrialResult] = {}
        self.verdicts: dict[str, str] = {}
        self.recorded_at: dict[str, float] = {}
        self.deliveries: Counter[str] = Counter()
        self.campaigns: list[str] = []

    @property
    def consoles(self) -> Path:
        return self.settings.cache_dir / "consoles"

    def add_worker(self) -> LocalWorker:
        n = len(self.workers)
        worker = LocalWorker(
            self.settings,
            worker_queues([self.kernel.name]),
            log_file=self.tmp / f"worker-{n}.log",
        ).start()
        self.workers.append(worker)
        return worker

    def submit(self, token: str) -> str:
        """One trial of ``token`` (a reproduction campaign); returns the trial id."""
        name = f"g{uuid.uuid4().hex[:6]}"
        with self.sessions.begin() as session:
            campaigns.create_reproduction(session, token, [self.kernel.name], runs=1, name=name)
        self.campaigns.append(name)
        return f"{name}-000000"

    def _on_record(self, result: TrialResult, verdict: str) -> None:
        self.deliveries[result.trial_id] += 1
        if result.guest is not None:
            self.domains.add(result.guest.name)
        self.results.setdefault(result.trial_id, result)
        self.verdicts.setdefault(result.trial_id, verdict)
        self.recorded_at.setdefault(result.trial_id, time.monotonic())

    def scheduler(self, deadline_s: float) -> Scheduler:
        return Scheduler(
            self.app,
            self.sessions,
            batch_size=1,
            deadline_s=deadline_s,
            boot_s=BOOT_S,
            on_record=self._on_record,
        )

    def drive(
        self,
        scheduler: Scheduler,
        trial_id: str,
        timeout: float,
        each: Callable[[], None] = lambda: None,
    ) -> TrialResult:
        """Tick the scheduler (calling ``each`` between ticks) until the trial is recorded."""
        give_up = time.monotonic() + timeout
        while trial_id not in self.results and time.monotonic() < give_up:
            report = scheduler.tick()
            each()
            if not (report.recorded or report.sent):
                time.sleep(0.2)
        assert trial_id in self.results, self.logs()
        return self.results[trial_id]

    def run(self, token: str, deadline_s: float = 60) -> TrialResult:
        trial_id = self.submit(token)
        return self.drive(self.scheduler(deadline_s), trial_id, 240)

    def guest_of(self, trial_id: str) -> str | None:
        """The domain running ``trial_id``: the one whose console shows its begin marker.

        A console file is per guest life (``zapfarm-<owner pid>-<life id>.log``); a
        booted guest has the same name, a restored one its image's name.
        """
        needle = f"zapfarm: trial {trial_id} begin".encode()
        for log in self.consoles.glob("zapfarm-*.log"):
            try:
                if needle in log.read_bytes():
                    return domain_with(f"'{log}'")
            except FileNotFoundError:
                continue
        return None

    def life_of(self, trial_id: str) -> str | None:
        """The life id of the guest that began ``trial_id`` (from its console's name)."""
        needle = f"zapfarm: trial {trial_id} begin".encode()
        for log in self.consoles.glob("zapfarm-*.log"):
            with contextlib.suppress(FileNotFoundError):
                if needle in log.read_bytes():
                    return log.stem.rsplit("-", 1)[1]
        return None

    def logs(self) -> str:
        return "\n".join(f"--- {w.log_file.name}\n{w.log_tail(40)}" for w in self.workers)

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.engine.dispose()


@pytest.fixture(scope="module")
def farm(
    tmp_path_factory: pytest.TempPathFactory, farm_domains: Callable[..., list[str]]
) -> Iterator[GuestFarm]:
    """A private Redis: no other test's worker (this machine is shared) can take a trial."""
    tmp = tmp_path_factory.mktemp("guestfaults")
    redis = RedisServer(tmp / "redis").start()
    try:
        farm = GuestFarm(tmp, redis)
        try:
            yield farm
        finally:
            farm.close()
    finally:
        redis.stop(signal.SIGKILL)
    left = lambda: farm.domains & set(farm_domains(settle=0))  # noqa: E731
    assert wait_for(lambda: not left(), 30), f"the workers left guests behind: {left()}"


def qemu_pid(domain: str) -> int:
    return int(Path(f"/run/libvirt/qemu/{domain}.pid").read_text().strip())


def domain_xml(domain: str) -> str:
    return subprocess.run(
        ["virsh", "-c", "qemu:///system", "dumpxml", domain],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def domain_with(text: str) -> str | None:
    """The running farm domain whose XML contains ``text`` (a console path), if any."""
    names = subprocess.run(
        ["virsh", "-c", "qemu:///system", "list", "--name"], capture_output=True, text=True
    ).stdout.split()
    for name in names:
        if name.startswith("zapfarm-"):
            with contextlib.suppress(subprocess.CalledProcessError):
                if text in domain_xml(name):
                    return name
    return None


def guests_of(pid: int) -> list[str]:
    """Farm domains whose owner (in their metadata) is process ``pid`` of this host."""
    host = socket.gethostname()
    found = []
    names = subprocess.run(
        ["virsh", "-c", "qemu:///system", "list", "--all", "--name"], capture_output=True, text=True
    ).stdout.split()
    for name in names:
        if name.startswith("zapfarm-"):
            with contextlib.suppress(subprocess.CalledProcessError):
                if owner_pid(domain_xml(name), host) == pid:
                    found.append(name)
    return found


class Trigger:
    """Fire ``action`` once, ``delay_s`` after the trial's guest shows its begin marker."""

    def __init__(
        self, farm: GuestFarm, trial_id: str, delay_s: float, action: Callable[[str], None]
    ) -> None:
        self.farm, self.trial_id, self.delay_s, self.action = farm, trial_id, delay_s, action
        self.domain: str | None = None
        self.seen_at: float | None = None
        self.fired_at: float | None = None
        self.in_flight = 0
        self.owner: int | None = None  # the worker process that owns the guest
        self.life: str | None = None  # the guest life's id (a restored guest keeps its name)

    def __call__(self) -> None:
        if self.fired_at is not None:
            return
        if self.domain is None:
            self.domain = self.farm.guest_of(self.trial_id)
            if self.domain:
                self.seen_at = time.monotonic()
                self.farm.domains.add(self.domain)
            return
        assert self.seen_at is not None
        if self.owner is None:
            self.owner = owner_pid(domain_xml(self.domain), socket.gethostname())
            self.life = self.farm.life_of(self.trial_id)
        if time.monotonic() - self.seen_at >= self.delay_s:
            self.in_flight = in_flight(self.farm.sessions)
            self.action(self.domain)
            self.fired_at = time.monotonic()


def show(farm: GuestFarm, label: str, trial_ids: list[str], at_fault: int) -> None:
    result = tally(
        label,
        farm.sessions,
        [t.rsplit("-", 1)[0] for t in trial_ids],
        in_flight_at_fault=at_fault,
        worker_logs=[w.log_file for w in farm.workers],
    )
    result.show()
    assert at_fault >= 1, "the fault hit while nothing was in flight"
    assert (result.recorded, result.duplicates, result.lost) == (len(trial_ids), 0, 0)
    assert all(farm.deliveries[t] == 1 for t in trial_ids), farm.deliveries


def test_a_worker_killed_mid_trial_is_redelivered_and_its_guest_is_gone(
    farm: GuestFarm, farm_domains: Callable[..., list[str]]
) -> None:
    second = farm.add_worker()
    host = socket.gethostname()
    trial_id = farm.submit(SLOW)

    def kill(domain: str) -> None:
        assert trigger.owner is not None, domain
        os.kill(trigger.owner, signal.SIGKILL)  # the pool process that owns the guest

    trigger = Trigger(farm, trial_id, 2.0, kill)
    try:
        result = farm.drive(farm.scheduler(60), trial_id, 300, trigger)
    finally:
        second.stop()
    assert trigger.domain is not None and trigger.fired_at is not None
    killed_pid = trigger.owner
    print(f"[worker SIGKILL] killed pool process {killed_pid} running {trigger.domain}")
    assert guests_of(killed_pid) == [], (
        "AUTODESTROY (or the guardian) did not take the orphan guest"
    )
    assert result.outcome == "ok", (result.error, result.console[-2000:])
    assert result.worker != f"{host}:{killed_pid}", "the killed process cannot have finished it"
    assert result.booted and result.guest is not None and result.guest.boot_id != trigger.life
    assert farm.verdicts[trial_id] == "clean"
    assert runs_per_trial(w.log_file for w in farm.workers)[trial_id] == 2  # killed, then redone
    assert any("WorkerLostError" in w.log_file.read_text() for w in farm.workers), farm.logs()
    show(farm, "worker SIGKILL", [trial_id], trigger.in_flight)


def test_a_hung_guest_gets_a_hang_verdict_in_time_and_the_pool_recovers(
    farm: GuestFarm, farm_domains: Callable[..., list[str]]
) -> None:
    deadline_s = 5.0
    trial_id = farm.submit(SLOWER)
    stopped: list[int] = []

    def freeze(domain: str) -> None:
        pid = qemu_pid(domain)
        os.kill(pid, signal.SIGSTOP)
        stopped.append(pid)

    trigger = Trigger(farm, trial_id, 0.5, freeze)
    try:
        result = farm.drive(farm.scheduler(deadline_s), trial_id, 240, trigger)
    finally:
        for pid in stopped:  # only matters if the worker failed to destroy it
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    assert trigger.fired_at is not None and trigger.domain is not None
    took = farm.recorded_at[trial_id] - trigger.fired_at
    print(f"[guest hang] verdict {took:.1f} s after SIGSTOP (no-progress window {NO_PROGRESS_S} s)")
    assert result.outcome == "timeout" and farm.verdicts[trial_id] == "hang", result.error
    assert "stopped making progress" in (result.error or "")
    assert took <= NO_PROGRESS_S + LIBVIRT_KILL_S + 15
    assert trigger.domain not in farm_domains(settle=0)
    after = farm.run(QUICK)
    assert after.outcome == "ok" and after.booted, after.error
    assert after.guest is not None and after.guest.boot_id != trigger.life
    show(farm, "guest hang", [trial_id, after.trial_id], trigger.in_flight)


def test_a_guest_kernel_panic_is_a_crash_verdict_and_the_pool_recovers(
    farm: GuestFarm, farm_domains: Callable[..., list[str]]
) -> None:
    trial_id = farm.submit(SLOWER)

    def panic(domain: str) -> None:
        subprocess.run(
            ["virsh", "-c", "qemu:///system", "qemu-monitor-command", "--hmp", domain, MCE_PANIC],
            check=True,
            capture_output=True,
        )

    trigger = Trigger(farm, trial_id, 1.0, panic)
    result = farm.drive(farm.scheduler(60), trial_id, 120, trigger)
    assert trigger.fired_at is not None and trigger.domain is not None
    took = farm.recorded_at[trial_id] - trigger.fired_at
    print(f"[guest panic] verdict {took:.1f} s after the machine check")
    assert result.outcome == "guest-died", (result.error, result.console[-2000:])
    assert farm.verdicts[trial_id] == "guest-crash"
    assert "Kernel panic - not syncing" in result.console
    assert took <= 20
    assert trigger.domain not in farm_domains(settle=0)
    after = farm.run(QUICK)
    assert after.outcome == "ok" and after.booted, after.error
    show(farm, "guest panic", [trial_id, after.trial_id], trigger.in_flight)


def test_console_logs_are_written_by_virtlogd(farm: GuestFarm) -> None:
    """virtlogd (not QEMU) holds the console file, so its max_size/max_backups rotation applies."""
    result = farm.run(QUICK)
    assert result.outcome == "ok" and result.guest is not None, result.error
    pid = result.worker.rsplit(":", 1)[1]  # the console is per life, named for its owner
    console = (farm.consoles / f"zapfarm-{pid}-{result.guest.boot_id}.log").resolve()

    def holders(pid: int) -> set[str]:
        found = set()
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                found.add(os.readlink(fd))
        return found

    virtlogd = subprocess.run(["pgrep", "-x", "virtlogd"], capture_output=True, text=True)
    assert str(console) not in holders(qemu_pid(result.guest.name))
    assert any(str(console) in holders(int(p)) for p in virtlogd.stdout.split())


# SLOW's work (~6 s unthrottled) at a 15 % vCPU quota: well past a 5 s deadline floor
THROTTLED = (
    "zf2-00000000000000bb~batch=1,cpu_quota_pct=15,kick_delay_us=50,pages=4096,"
    "pressure_mb=0,rounds=2,vcpu_pin=none"
)


def test_a_throttled_slow_trial_is_not_a_hang(farm: GuestFarm) -> None:
    """The scheduler's deadline floor is 5 s, the trial takes longer: its cost-scaled
    deadline covers it, its heartbeats prove progress, and its oracles decide."""
    started = time.monotonic()
    result = farm.run(THROTTLED, deadline_s=5)
    took = time.monotonic() - started
    assert result.outcome == "ok", (result.outcome, result.error, result.console[-2000:])
    assert farm.verdicts[result.trial_id] == "clean"
    assert result.elapsed_ms is not None and result.elapsed_ms > 5000, result.elapsed_ms
    print(f"[throttled] {result.elapsed_ms / 1000:.1f} s at 15 % quota; {took:.0f} s in all")


def _libvirtd_pids() -> list[int]:
    found = subprocess.run(["pgrep", "-x", "libvirtd"], capture_output=True, text=True)
    return [int(p) for p in found.stdout.split()]


def _ensure_libvirtd() -> None:
    if not _libvirtd_pids():
        subprocess.run(["libvirtd", "-d"], check=True)
    assert wait_for(
        lambda: (
            subprocess.run(
                ["virsh", "-c", "qemu:///system", "version"], capture_output=True
            ).returncode
            == 0
        ),
        30,
    ), "libvirtd did not come back"


def test_a_libvirtd_restart_mid_trial_is_an_infra_error_and_is_retried(farm: GuestFarm) -> None:
    trial_id = farm.submit(SLOWER)

    def restart(_domain: str) -> None:
        try:
            for pid in _libvirtd_pids():
                os.kill(pid, signal.SIGTERM)
            assert wait_for(lambda: not _libvirtd_pids(), 30), "libvirtd did not stop"
        finally:
            _ensure_libvirtd()

    trigger = Trigger(farm, trial_id, 2.0, restart)
    try:
        first = farm.drive(farm.scheduler(60), trial_id, 240, trigger)
        assert trigger.fired_at is not None, "the restart never happened"
        took = farm.recorded_at[trial_id] - trigger.fired_at
        print(f"[libvirtd restart] {first.outcome} {took:.1f} s after the restart: {first.error}")
        assert first.outcome == "infra-error", (first.outcome, first.error)
        assert farm.verdicts[trial_id] == "infra-error"
        assert "unreachable" in (first.error or "") or "gone" in (first.error or "")
        retry = farm.drive(farm.scheduler(60), f"{trial_id}.r1", 300)
        attempts = [retry]
        if retry.outcome == "infra-error":  # libvirtd was still starting: the second retry
            attempts.append(farm.drive(farm.scheduler(60), f"{trial_id}.r2", 300))
        assert attempts[-1].outcome == "ok", [(a.outcome, a.error) for a in attempts]
        assert attempts[-1].booted  # a new guest on a new connection
        assert farm.verdicts[attempts[-1].trial_id] == "clean"
    finally:
        _ensure_libvirtd()
