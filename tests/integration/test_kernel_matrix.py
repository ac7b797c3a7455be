"""Each kernel of the matrix (5.10, 6.1, 6.12) runs one real trial in a TCG guest.

What it proves per kernel: the agent's exact mm signal works there (the ready
message says ``userns`` and the trial's mm was seen freed before the end
marker), and the counter oracle reads exactly: RssShmem after populating is
the baseline plus every page, to the kB, for a page count (1001) that is no
multiple of any per-CPU batch, and returns to the baseline after punching.
The 6.12 guest is where /proc/<pid>/status reads per-CPU counters.

And each kernel gets swap: a swapped scenario's trial finds active swap on
zram0, from the kernel's own modules appended to the guest image
(farm.artifacts.modules: the host's for the installed kernel, the ones
``farm kernels fetch`` kept for Debian's 5.10 and 6.12).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from farm.artifacts.guest_image import build_initramfs
from farm.artifacts.kernels import (
    KernelImage,
    cached_kernels,
    fetch_debian,
    installed_kernel,
    read_manifest,
)
from farm.artifacts.modules import kernel_modules
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
SWAPPED = (
    "zf3-00000000000000d1~mover=move_pages,pages=256,rounds=1,scenario=swapped-private-truncate,"
    "cpu_quota_pct=100,vcpu_pin=none"
)


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


def kernel_with_modules(series: str) -> KernelImage:
    """The series' kernel as this host has it, never downloaded; skips naming the fix."""
    suite = SUITES[series]
    if suite is None:
        image = installed_kernel()
    else:
        fetched = [
            k
            for k in cached_kernels(load_settings().cache_dir)
            if k.source == f"debian:{suite}" and k.release.startswith(series + ".")
        ]
        if not fetched:
            pytest.skip(f"debian:{suite} is not fetched: `farm kernels fetch debian:{suite}`")
        image = fetched[-1]
        if "modules" not in (read_manifest(image.path.parent) or {}):
            pytest.skip(f"{image.name} was fetched before modules were kept: fetch it again")
    assert kernel_modules(image.path) is not None, f"{image.name} has no zram module to load"
    return image


@pytest.mark.parametrize("series", list(SUITES))
def test_a_swapped_scenario_has_swap_on_the_kernels_own_zram(pool: GuestPool, series: str) -> None:
    """Runs first and keeps its guest (unless tainted): the counter-oracle test reuses it."""
    image = kernel_with_modules(series)
    message = trial_message(f"swap-{series}", SWAPPED, image.name, image.sha256, 300)
    result = execute(pool, message, "matrix", cache_dir=load_settings().cache_dir)
    assert result.outcome == "ok", (result.error, result.console[-2000:])
    assert result.guest is not None and result.guest.kernel_release == image.release
    program = result.program
    assert program is not None and program.error is None, (program, result.console[-2000:])
    assert program.swap is not None and program.swap.total_kb is not None
    assert program.swap.total_kb > 0  # zram0 swap is on: the modules loaded
    assert program.swap.paged_out_kb == 256 * program.page_size // 1024  # all went to swap
    print(f"{series}: swap {program.swap.total_kb} kB, paged out {program.swap.paged_out_kb} kB")
    assert judge(result).kind == "clean", (judge(result), result.console[-2000:])


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
