"""Disk hygiene on a worker host: console and worker logs capped, oldest first, live ones kept."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from workers.disk import owner_alive, prune, tidy
from workers.pool import GuestPool
from workers.vm import MAX_CONSOLE_READ, Guest, GuestConfig, split_trial

NOW = time.time()


def make(path: Path, size: int, age_s: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    os.utime(path, (NOW - age_s, NOW - age_s))
    return path


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_prune_deletes_oldest_first_until_under_the_cap(tmp_path: Path) -> None:
    files = [make(tmp_path / f"f{i}.log", 100, age_s=3600 * (10 - i)) for i in range(10)]
    deleted = prune(tmp_path, 650, now=NOW)
    assert deleted == files[:4]  # 1000 bytes -> 600: the four oldest go
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"f{i}.log" for i in range(4, 10)]
    assert prune(tmp_path, 650, now=NOW) == []


def test_prune_keeps_protected_and_recent_files(tmp_path: Path) -> None:
    old_live = make(tmp_path / "live.log", 500, age_s=86400)
    recent = make(tmp_path / "recent.log", 500, age_s=10)
    old = make(tmp_path / "old.log", 500, age_s=7200)
    deleted = prune(tmp_path, 100, keep=lambda p: p == old_live, min_age_s=300, now=NOW)
    assert deleted == [old]
    assert old_live.exists() and recent.exists()
    assert prune(tmp_path / "missing", 0) == []


def test_tidy_caps_consoles_and_logs_but_never_a_live_guests_console(tmp_path: Path) -> None:
    consoles, logs = tmp_path / "consoles", tmp_path / "logs"
    gone = dead_pid()
    live = make(consoles / f"zapfarm-{os.getpid()}-aaaa.log", 4000, age_s=86400 * 3)
    live_rotated = make(consoles / f"zapfarm-{os.getpid()}-aaaa.log.0", 4000, age_s=86400 * 3)
    orphans = [
        make(consoles / f"zapfarm-{gone}-{i:04x}.log", 1000, age_s=3600 * (9 - i)) for i in range(9)
    ]
    old_logs = [make(logs / f"worker-{i}.log", 1000, age_s=3600 * (5 - i)) for i in range(5)]
    assert owner_alive(live) and owner_alive(live_rotated) and not owner_alive(orphans[0])
    deleted = tidy(tmp_path, consoles_max=12_000, logs_max=2500)
    assert set(deleted) == set(orphans[:5]) | set(old_logs[:3])
    assert live.exists() and live_rotated.exists() and all(p.exists() for p in orphans[5:])
    assert tidy(tmp_path / "nothing-here") == []


def test_retiring_a_guest_deletes_its_console_and_virtlogd_backups(tmp_path: Path) -> None:
    config = GuestConfig("k", Path("/dev/null"), Path("/dev/null"), tmp_path)
    guest = Guest(conn=None, config=config)  # type: ignore[arg-type]  # never booted
    other = make(tmp_path / "zapfarm-1-other.log", 10, 0)
    logs = [guest.console_log] + [Path(f"{guest.console_log}.{i}") for i in range(3)]
    for log in logs:
        make(log, 10, 0)
    pool = GuestPool(conn=None, initrd=Path("/dev/null"), console_dir=tmp_path, virt_type="qemu")  # type: ignore[arg-type]
    pool.guests["k"] = guest
    pool.retire("k")
    assert not any(log.exists() for log in logs) and other.exists()


def test_a_flooded_console_is_read_head_and_tail_only(tmp_path: Path) -> None:
    config = GuestConfig("k", Path("/dev/null"), Path("/dev/null"), tmp_path)
    guest = Guest(conn=None, config=config)  # type: ignore[arg-type]
    with guest.console_log.open("wb") as f:
        f.write(b"boot\nzapfarm: trial t1 begin\n")
        f.write(b"spam " * (3 * MAX_CONSOLE_READ // 5))
        f.write(b"\nzapfarm: trial t1 end\n")
    data = guest._read_console(5)
    assert len(data) < MAX_CONSOLE_READ + 100
    assert b"console bytes not read" in data
    _, excerpt, _ = split_trial(data, "t1")
    assert excerpt.startswith(b"zapfarm: trial t1 begin") and excerpt.endswith(b"t1 end\n")
    assert guest._read_console(10 * MAX_CONSOLE_READ) == guest._read_console(0)  # rotated
