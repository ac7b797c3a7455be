"""Console between trials: a report printed after a trial's end marker is the boot's.

Real marker text (as guest/agent.c writes it to /dev/kmsg and the console shows
it), a kept guest driven through Guest.run with a scripted channel, and the
pool's check before the next trial: a late report or a dead guest retires the
guest and travels, as a BootReport, with the next trial's result.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from farm.artifacts.kernels import sha256_of, write_manifest
from farm.protocol import BootReport, TrialResult
from workers.pool import GuestPool
from workers.trial import execute
from workers.vm import Guest, GuestConfig, GuestError, split_trial

TRIAL = "selftest-positive-20261128-075846-000000"
BOOT = b"[    2.713120] Run /init as init process\n"
BEGIN = f"zapfarm: trial {TRIAL} begin\n".encode()
INSIDE = b"[   88.541212] zapmigrate (311) used greatest stack depth: 12680 bytes left\n"
END = f"zapfarm: trial {TRIAL} end\n".encode()
LATE = b"[   90.603377] BUG: Bad rss-counter state mm:000000003a8b2c6f type:MM_SHMEMPAGES val:-1\n"
PANIC = b"[   91.000001] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000009\n"


def test_split_keeps_a_late_report_out_of_the_trial() -> None:
    data = BOOT + BEGIN + INSIDE + END + LATE
    before, excerpt, used = split_trial(data, TRIAL)
    assert (before, excerpt) == (BOOT, BEGIN + INSIDE + END)
    assert data[used:] == LATE  # read again, as the boot's, before the next trial


def test_split_without_an_end_marker_takes_everything_after_begin() -> None:
    before, excerpt, used = split_trial(BOOT + BEGIN + INSIDE, TRIAL)
    assert (before, excerpt, used) == (BOOT, BEGIN + INSIDE, len(BOOT + BEGIN + INSIDE))


def test_markers_of_another_trial_do_not_cut() -> None:
    other = BEGIN.replace(TRIAL.encode(), b"t-other")
    _, excerpt, _ = split_trial(other + INSIDE, TRIAL)
    assert excerpt == other + INSIDE


class ScriptedChannel:
    """The agent's side of serial1, scripted: one result, then silence."""

    def __init__(self) -> None:
        self.answers: list[dict[str, Any]] = []

    def send(self, message: dict[str, Any]) -> None:
        self.answers.append({"op": "result", "id": message["id"], "status": "exited"})

    def receive(self, timeout: float, want: str | None = None) -> dict[str, Any] | None:
        return self.answers.pop(0) if self.answers else None

    def close(self) -> None:
        pass


class LiveConnection:
    """libvirt's connection as far as the pool and the guest ask: it is up."""

    def isAlive(self) -> bool:
        return True


class KeptGuest(Guest):
    """A booted guest without a hypervisor: its console is a file the test writes."""

    up = True

    def alive(self) -> bool:
        return self.up


class NoBootPool(GuestPool):
    """The real pool, except that a fresh boot fails as it would without a hypervisor."""

    def config(self, kernel_name: str, kernel: Path) -> GuestConfig:
        raise GuestError("no hypervisor in a unit test")


@pytest.fixture
def kept(tmp_path: Path) -> tuple[GuestPool, KeptGuest]:
    folder = tmp_path / "kernels" / "k"  # this worker's cache, holding kernel "k"
    folder.mkdir(parents=True)
    kernel = folder / "bzImage"
    kernel.write_bytes(b"stand-in image")
    write_manifest(folder, {"path": str(kernel), "sha256": sha256_of(kernel)})
    pool = NoBootPool(
        conn=LiveConnection(), initrd=tmp_path / "initrd", console_dir=tmp_path, virt_type="qemu"
    )  # type: ignore[arg-type]
    guest = KeptGuest(
        conn=LiveConnection(), config=GuestConfig("k", kernel, tmp_path / "initrd", tmp_path)
    )  # type: ignore[arg-type]
    guest.channel = ScriptedChannel()  # type: ignore[assignment]
    guest.ready = {"kernel": "6.1.0-28-amd64", "numa_nodes": 2}
    guest.console_log.write_bytes(BOOT)
    guest.console_mark = len(BOOT)  # as boot() leaves it
    pool.guests["k"] = guest
    return pool, guest


def run_trial(guest: Guest, *console: bytes) -> str:
    with guest.console_log.open("ab") as f:
        f.write(b"".join(console))
    return guest.run(TRIAL, [], 5).console


def next_trial(pool: GuestPool, guest: Guest, cache_dir: Path) -> TrialResult:
    """The next trial on the guest's kernel, through the worker's execute()."""
    message = {
        "trial_id": "next",
        "token": "zf2-8188e2f542964e0c~pages=512",
        "kernel": {"name": "k", "sha256": sha256_of(guest.config.kernel)},
        "deadline_s": 60,
    }
    return execute(pool, message, "w", cache_dir=cache_dir)


def test_a_report_after_the_end_marker_is_the_boots_and_retires_the_guest(
    kept: tuple[GuestPool, KeptGuest],
) -> None:
    pool, guest = kept
    assert run_trial(guest, BEGIN, INSIDE, END) == (BEGIN + INSIDE + END).decode()
    with guest.console_log.open("ab") as f:
        f.write(LATE)  # check_mm() of a mm that outlived the trial
    with pytest.raises(GuestError):  # the replacement cannot boot here
        pool.acquire("k", guest.config.kernel)
    assert "k" not in pool.guests  # not reused
    assert pool.prior_boot == BootReport(
        boot_id=guest.boot_id,
        kernel_release="6.1.0-28-amd64",
        after_trial=TRIAL,
        died=False,
        titles=["BUG: Bad rss-counter state"],
        console=LATE.decode(),
    )


def test_the_boot_report_goes_with_the_next_trials_result(
    kept: tuple[GuestPool, KeptGuest], tmp_path: Path
) -> None:
    pool, guest = kept
    run_trial(guest, BEGIN, INSIDE, END, LATE)
    result = next_trial(pool, guest, tmp_path)
    assert (result.outcome, result.error) == ("infra-error", "no hypervisor in a unit test")
    assert result.prior_boot is not None
    assert (result.prior_boot.boot_id, result.prior_boot.after_trial) == (guest.boot_id, TRIAL)
    assert result.prior_boot.titles == ["BUG: Bad rss-counter state"]
    assert result.to_json()["prior_boot"]["console"] == LATE.decode()  # what the recorder stores


def test_a_guest_that_died_between_trials_is_reported(kept: tuple[GuestPool, KeptGuest]) -> None:
    pool, guest = kept
    run_trial(guest, BEGIN, INSIDE, END)
    with guest.console_log.open("ab") as f:
        f.write(PANIC)
    guest.up = False
    with pytest.raises(GuestError):
        pool.acquire("k", guest.config.kernel)
    assert pool.prior_boot is not None and pool.prior_boot.died
    assert pool.prior_boot.titles == ["kernel panic: Attempted to kill init!"]


def test_a_quiet_guest_is_kept(kept: tuple[GuestPool, KeptGuest]) -> None:
    pool, guest = kept
    run_trial(guest, BEGIN, INSIDE, END)
    assert pool.acquire("k", guest.config.kernel) == (guest, False)
    assert pool.prior_boot is None


# Idle guests: shut down after idle_s, their late reports kept for the next trial.


def test_an_idle_quiet_guest_is_shut_down_and_a_busy_one_kept(
    kept: tuple[GuestPool, KeptGuest],
) -> None:
    pool, guest = kept
    pool.idle_s = 300
    run_trial(guest, BEGIN, INSIDE, END)
    pool.release("k", tainted=False)
    ended = pool.last_used["k"]
    assert pool.retire_idle(now=ended + 299) == []  # used 299 s ago: kept
    assert pool.guests["k"] is guest
    assert pool.retire_idle(now=ended + 300) == ["k"]
    assert "k" not in pool.guests and pool.pending == {}
    with pytest.raises(GuestError):  # the next trial needs a new guest
        pool.acquire("k", guest.config.kernel)
    assert pool.prior_boot is None


def test_an_idle_guests_late_report_goes_with_the_next_trial(
    kept: tuple[GuestPool, KeptGuest], tmp_path: Path
) -> None:
    pool, guest = kept
    run_trial(guest, BEGIN, INSIDE, END)
    pool.release("k", tainted=False)
    with guest.console_log.open("ab") as f:
        f.write(LATE)
    assert pool.retire_idle(now=pool.last_used["k"] + pool.idle_s) == ["k"]
    result = next_trial(pool, guest, tmp_path)
    assert result.prior_boot is not None
    assert (result.prior_boot.boot_id, result.prior_boot.after_trial) == (guest.boot_id, TRIAL)
    assert result.prior_boot.titles == ["BUG: Bad rss-counter state"]
    assert pool.pending == {}  # reported once


def test_idle_zero_keeps_guests_forever(kept: tuple[GuestPool, KeptGuest]) -> None:
    pool, guest = kept
    pool.idle_s = 0
    pool.release("k", tainted=False)
    assert pool.retire_idle(now=pool.last_used["k"] + 10**6) == []
    assert pool.guests["k"] is guest


def test_a_guest_is_not_retired_while_a_trial_holds_the_pool(
    kept: tuple[GuestPool, KeptGuest],
) -> None:
    pool, guest = kept
    pool.release("k", tainted=False)
    late = pool.last_used["k"] + pool.idle_s
    retired: list[list[str]] = []
    with pool.lock:  # as workers.tasks holds it around a trial
        reaper = threading.Thread(target=lambda: retired.append(pool.retire_idle(now=late)))
        reaper.start()
        reaper.join(0.5)
        assert pool.guests["k"] is guest and retired == []
    reaper.join(10)
    assert retired == [["k"]] and "k" not in pool.guests


def test_the_worker_thread_retires_idle_guests(kept: tuple[GuestPool, KeptGuest]) -> None:
    from workers.tasks import retire_idle_guests

    pool, _guest = kept
    pool.idle_s = 0.2
    pool.release("k", tainted=False)
    stop = threading.Event()
    thread = threading.Thread(target=retire_idle_guests, args=(pool, 0.05, stop), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while "k" in pool.guests and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "k" not in pool.guests
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()
