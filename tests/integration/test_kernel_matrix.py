"""Each kernel of the matrix (5.10, 6.1, 6.12) runs one real trial in a TCG guest.

What it proves per kernel: the agent's exact mm signal works there (the ready
message says ``userns`` and the trial's mm was seen freed before the end
marker), and the counter oracle reads exactly: RssShmem after populating is
the baseline plus every page, to the kB, for a page count (1001) that is no
multiple of any per-CPU batch, and returns to the baseline after punching.
The 6.12 guest is where /proc/<pid>/status reads per-CPU counters.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from farm.artifacts.guest_image import build_initramfs
from farm.artifacts.kernels import KernelImage, fetch_debian, installed_kernel
from farm.params import SeedToken
from farm.protocol import trial_message
from farm.settings import load_settings
from farm.triage.verdict import judge
from workers.connection import open_connection
from workers.pool import GuestPool
from workers.trial import execute

pytestmark = [pytest.mark.vm]

PAGES = 1001
TOKEN = f"zf2-8188e2f542964e0c~pages={PAGES},rounds=1,cpu_quota_pct=100,vcpu_pin=none"
SUITES = {"5.10": "bullseye", "6.1": None, "6.12": "trixie"}  # None: the installed kernel


@pytest.fixture(scope="module")
def pool(
    tmp_path_factory: pytest.TempPathFactory, farm_domains: Callable[..., list[str]]
) -> Iterator[GuestPool]:
    settings = load_settings()
    pool = GuestPool(
        conn=open_connection(settings.libvirt_uri),
        initrd=build_initramfs(settings.cache_dir),
        console_dir=tmp_path_factory.mktemp("consoles"),
        virt_type="qemu",
        memory_mb=settings.guest_memory_mb,
        cpus=2,
        boot_deadline_s=300,  # a busy shared host stretches TCG boots well past the usual 90 s
    )
    os.chmod(pool.console_dir, 0o755)
    try:
        yield pool
    finally:
        pool.close()
    mine = f"zapfarm-{os.getpid()}-"  # other farms on this host run guests of their own
    assert [n for n in farm_domains(settle=0) if n.startswith(mine)] == [], (
        "the test left guests behind"
    )


def kernel(series: str) -> KernelImage:
    suite = SUITES[series]
    if suite is None:
        return installed_kernel()
    return fetch_debian(load_settings().cache_dir, f"debian:{suite}").image  # cached after once


def rss_line(result: object) -> str:
    program = getattr(result, "program", None)
    rss = program.rss_shmem_kb if program else None
    return f"{rss.before}/{rss.populated}/{rss.punched} kB" if rss else "-"


@pytest.mark.parametrize("series", list(SUITES))
def test_the_counter_oracle_reads_exactly_and_the_mm_signal_holds(
    pool: GuestPool, series: str
) -> None:
    image = kernel(series)
    assert image.release.startswith(series + "."), image
    message = trial_message(f"matrix-{series}", TOKEN, image.name, image.sha256, 300)
    result = execute(pool, message, "matrix", cache_dir=load_settings().cache_dir)
    pool.retire(image.name)
    assert result.outcome == "ok", (result.error, result.console[-2000:])
    assert result.guest is not None and result.guest.kernel_release == image.release
    assert result.mm_released is True  # the end marker followed the mm's teardown
    assert result.mm_wait_ms is not None and result.mm_wait_ms < 8000
    print(f"{series}: mm freed {result.mm_wait_ms} ms after the reap, RssShmem {rss_line(result)}")
    program = result.program
    assert program is not None and program.error is None and program.warnings == []
    page_kb = program.page_size // 1024
    rss = program.rss_shmem_kb
    assert rss.before is not None and rss.populated is not None
    assert rss.populated - rss.before == PAGES * page_kb, rss
    assert rss.punched == rss.before, rss
    assert program.punch.unpunched == 0
    assert SeedToken.parse(TOKEN).params().pages == PAGES
    assert judge(result).kind == "clean", judge(result)


def test_the_guest_announces_the_exact_mm_signal(pool: GuestPool) -> None:
    image = installed_kernel()
    guest, _ = pool.acquire(image.name, Path(image.path))
    try:
        assert guest.ready.get("mm_signal") == "userns", guest.ready
    finally:
        pool.retire(image.name)
