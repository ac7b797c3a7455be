"""Recovery by restore: guests restored from a memory image, on the installed Debian kernel.

Two pools share one libvirt connection: one boots (the reference), one
restores every new life from its image (built by the first boot). The same
tokens must get the same verdicts on both; after a restore the control
channel, the console file and the trial markers must be right. Two boots in
all; every other life is a restore (~0.5 s on an idle host).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import libvirt
import pytest

from farm.artifacts.guest_image import build_initramfs
from farm.artifacts.kernels import KernelImage, installed_kernel
from farm.protocol import TrialResult
from farm.settings import load_settings
from farm.triage.verdict import judge
from workers.connection import open_connection
from workers.pool import GuestPool
from workers.snapshot import SnapshotStore
from workers.trial import execute
from workers.vm import Guest, GuestError

pytestmark = [pytest.mark.vm]

TOKENS = [
    "zf1-8188e2f542964e0c~pages=256",
    "zf1-00000000000000aa~pages=256,placement=split,punch=madvise",
    "zf1-00000000000000cc~pages=128",
]


@dataclass
class Pools:
    conn: libvirt.virConnect
    kernel: KernelImage
    folder: Path
    booting: GuestPool
    restoring: GuestPool
    count: int = 0
    names: set[str] = field(default_factory=set)  # every guest this module started

    def run(self, pool: GuestPool, token: str) -> TrialResult:
        self.count += 1
        message = {
            "trial_id": f"rv-{self.count}",
            "token": token,
            "kernel": {"name": self.kernel.name, "sha256": self.kernel.sha256},
            "deadline_s": 60,
        }
        result = execute(pool, message, worker="test")
        if result.guest is not None:
            self.names.add(result.guest.name)
        return result


@pytest.fixture(scope="module")
def pools(
    tmp_path_factory: pytest.TempPathFactory, farm_domains: Callable[..., list[str]]
) -> Iterator[Pools]:
    settings = load_settings()
    conn = open_connection(settings.libvirt_uri)
    folder = tmp_path_factory.mktemp("restore")
    initrd = build_initramfs(settings.cache_dir)
    common = {
        "conn": conn,
        "initrd": initrd,
        "console_dir": folder / "consoles",
        "virt_type": settings.virt_type or "qemu",
        "boot_deadline_s": 300.0,  # a shared 2-core host can be very busy
    }
    p = Pools(
        conn=conn,
        kernel=installed_kernel(),
        folder=folder,
        booting=GuestPool(**common),  # type: ignore[arg-type]
        restoring=GuestPool(**common, snapshots=SnapshotStore(folder / "images")),  # type: ignore[arg-type]
    )
    try:
        yield p
    finally:
        p.booting.close()
        p.restoring.close()
        conn.close()

    # other farms share this host: look only at this process's and this module's guests
    def mine() -> list[str]:
        pid_prefix = f"zapfarm-{os.getpid()}-"
        return [n for n in farm_domains(settle=0) if n in p.names or n.startswith(pid_prefix)]

    deadline = time.monotonic() + 15
    while (left := mine()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert left == [], "the pools left guests behind"


def excerpt_is_its_own(result: TrialResult, others: list[str]) -> None:
    lines = result.console.splitlines()
    assert lines[0].endswith(f"zapfarm: trial {result.trial_id} begin"), result.console[:500]
    assert lines[-1].endswith(f"zapfarm: trial {result.trial_id} end"), result.console[-500:]
    for other in others:
        assert f"trial {other} " not in result.console


def test_restored_lives_give_the_verdicts_of_a_fresh_boot(pools: Pools) -> None:
    fresh = [pools.run(pools.booting, t) for t in TOKENS]
    assert [r.booted for r in fresh] == [True, False, False]

    restored = []
    for token in TOKENS:  # each trial on a new life, as after a kernel report
        restored.append(pools.run(pools.restoring, token))
        pools.restoring.retire(pools.kernel.name)
    for f, r in zip(fresh, restored, strict=True):
        assert r.outcome == f.outcome == "ok", (r.error, r.console[-2000:])
        assert judge(r).kind == judge(f).kind == "clean", (judge(r), r.console[-2000:])
        assert r.program is not None and f.program is not None
        assert r.program.numa_nodes == f.program.numa_nodes == 2
        assert r.program.migrate.moved > 0 and r.program.vma.rss_kb == 0
        assert r.program.rss_shmem_kb.punched == r.program.rss_shmem_kb.before
        assert r.booted and r.guest is not None and r.guest.trials_on_boot == 1
    ids = [r.trial_id for r in restored]
    for r in restored:
        excerpt_is_its_own(r, [i for i in ids if i != r.trial_id])
    lives = {r.guest.boot_id for r in restored if r.guest}
    names = {r.guest.name for r in restored if r.guest}
    assert len(lives) == 3 and len(names) == 1  # one image, three lives
    [meta] = (pools.folder / "images").glob("*.json")
    assert json.loads(meta.read_text())["ready"]["kernel"] == fresh[0].guest.kernel_release


def test_channel_console_and_markers_are_right_after_a_restore(pools: Pools) -> None:
    pools.restoring.retire(pools.kernel.name)
    guest, new_life = pools.restoring.acquire(pools.kernel.name, pools.kernel.path)
    assert new_life and guest.restored
    print(f"[restore] {guest.restore_phases} total {guest.boot_seconds:.2f} s")
    results = [pools.run(pools.restoring, t) for t in TOKENS + TOKENS[:1]]
    assert [r.booted for r in results] == [False] * 4
    assert [r.guest.trials_on_boot for r in results if r.guest] == [1, 2, 3, 4]
    assert {r.guest.boot_id for r in results if r.guest} == {guest.boot_id}
    ids = [r.trial_id for r in results]
    for r in results:
        assert r.outcome == "ok" and judge(r).kind == "clean", (r.error, r.console[-2000:])
        excerpt_is_its_own(r, [i for i in ids if i != r.trial_id])
    # the life's console file: the resume mark, then every trial's markers in order
    text = guest.console_log.read_text(errors="replace")
    marks = [line.split("zapfarm: ", 1)[1] for line in text.splitlines() if "zapfarm: " in line]
    expected = [f"resume {guest.boot_id}"]
    for i in ids:
        expected += [f"trial {i} begin", f"trial {i} end"]
    assert marks == expected, text[-3000:]
    assert "Linux version" not in text  # the boot belongs to the image, not to this life
    assert guest.channel is not None
    guest.channel.send({"op": "ping", "id": "after-restore"})
    assert guest.channel.receive(30, want="pong") == {"op": "pong", "id": "after-restore"}
    assert guest.channel.bad_frames == 0


def test_a_dead_guest_is_replaced_by_a_restore(pools: Pools) -> None:
    guest, _ = pools.restoring.acquire(pools.kernel.name, pools.kernel.path)
    [image] = (pools.folder / "images").glob("*.save")
    built = image.stat().st_mtime_ns
    assert guest.dom is not None
    guest.dom.destroy()  # as a panic with on_crash=destroy would
    r = pools.run(pools.restoring, TOKENS[2])
    assert r.outcome == "ok" and r.booted and r.guest is not None
    assert r.guest.boot_id != guest.boot_id
    assert image.stat().st_mtime_ns == built  # restored from the same image, not rebuilt


def test_a_corrupt_image_is_refused_cleanly(pools: Pools, tmp_path: Path) -> None:
    pools.restoring.retire(pools.kernel.name)  # the image's name is free: libvirt must refuse it
    [image] = (pools.folder / "images").glob("*.save")
    bad = tmp_path / "bad.save"
    data = bytearray(image.read_bytes())
    data[len(data) // 2 :] = b"\xa5" * (len(data) - len(data) // 2)  # header and XML intact
    bad.write_bytes(bytes(data))
    config = pools.restoring.config(pools.kernel.name, pools.kernel.path)
    guest = Guest(pools.conn, config)
    with pytest.raises(GuestError, match=r"cannot restore|did not answer resume"):
        guest.restore(bad, expect_kernel=pools.kernel.release)
    assert guest.dom is None and guest.guardian is None
    with pytest.raises(libvirt.libvirtError):
        pools.conn.lookupByName(guest.name)


CHILD = """
import sys, time
from pathlib import Path
from workers.connection import open_connection
from workers.pool import GuestPool
from workers.snapshot import SnapshotStore
conn = open_connection("qemu:///system")
folder = Path(sys.argv[1])
pool = GuestPool(conn=conn, initrd=Path(sys.argv[2]), console_dir=folder / "consoles",
                 virt_type=sys.argv[5], snapshots=SnapshotStore(folder / "images"))
guest, _ = pool.acquire(sys.argv[3], Path(sys.argv[4]))
print(guest.name, guest.restored, flush=True)
time.sleep(600)
"""


def test_a_killed_owner_takes_its_restored_guest_along(pools: Pools) -> None:
    """No AUTODESTROY on restore: the guardian destroys the guest when its process dies."""
    pools.restoring.close()  # frees the slot (and its image) for the child
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            CHILD,
            str(pools.folder),
            str(pools.restoring.initrd),
            pools.kernel.name,
            str(pools.kernel.path),
            pools.restoring.virt_type or "qemu",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        name, restored = child.stdout.readline().split()
        pools.names.add(name)
        assert restored == "True"
        assert pools.conn.lookupByName(name).isActive()
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            pools.conn.lookupByName(name)
        except libvirt.libvirtError:
            return
        time.sleep(0.2)
    pytest.fail(f"{name} outlived its killed owner")
