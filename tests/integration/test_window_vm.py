"""The window counters move during real trials on --instrument count builds (TCG guests).

The real worker path end to end: the guest kernel counts in /proc/vmstat, the
agent reads it around the trial, workers.trial.execute turns the reply into
TrialResult.window. One boot per kernel serves its trials. A kernel that is
not built here is skipped, naming the command that builds it; the fix-reverted
build is optional (the fixed one is the acceptance case).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import pytest

from farm.artifacts.guest_image import build_initramfs
from farm.artifacts.kernels import KernelImage, cached_kernels
from farm.protocol import TrialResult, trial_message
from farm.settings import load_settings
from workers.connection import open_connection
from workers.pool import GuestPool
from workers.trial import execute

pytestmark = [pytest.mark.vm, pytest.mark.slow]

TOKEN = "zf1-8188e2f542964e0c~pages=4096"
MAX_TRIALS = 6  # until the window was met; trial 1 of a boot met it on every WARN build


def count_build(flags: str) -> KernelImage | None:
    """The newest cached 6.1 build with these flags, if any."""
    name = re.compile(rf"build-6\.1-{re.escape(flags)}-[0-9a-f]{{8}}")
    found = [k for k in cached_kernels(load_settings().cache_dir) if name.fullmatch(k.name)]
    return max(found, key=lambda k: k.path.stat().st_mtime) if found else None


@pytest.fixture(scope="module")
def pool() -> Iterator[GuestPool]:
    settings = load_settings()
    conn = open_connection(settings.libvirt_uri)
    guests = GuestPool.from_settings(conn, settings, build_initramfs(settings.cache_dir))
    try:
        yield guests
    finally:
        guests.close()
        conn.close()


def trials(pool: GuestPool, kernel: KernelImage) -> list[TrialResult]:
    """Trials on one boot of ``kernel`` until one met the window (at most MAX_TRIALS)."""
    results: list[TrialResult] = []
    for i in range(MAX_TRIALS):
        trial_id = f"window-{uuid.uuid4().hex[:8]}-{i}"
        message = trial_message(trial_id, TOKEN, kernel.name, kernel.sha256, 120)
        result = execute(pool, message, worker="window-test")
        assert result.outcome == "ok", (result.outcome, result.error, result.console[-2000:])
        assert result.window is not None, "a count build must report its window counters"
        results.append(result)
        if result.window.entries > 0:
            break
    pool.close()
    return results


def test_window_moves_on_the_fixed_count_build(pool: GuestPool) -> None:
    kernel = count_build("count")
    if kernel is None:
        pytest.skip(
            "no 6.1 count build in the cache: `farm kernels build --source 6.1 --instrument count`"
        )
    results = trials(pool, kernel)
    windows = [r.window for r in results if r.window is not None]
    assert sum(w.entries for w in windows) > 0, windows
    # the fixed code removes every entry it meets: no skip, by construction
    assert all(w.skipped == 0 and w.swap_skipped == 0 for w in windows), windows
    assert all("WARNING:" not in r.console for r in results)  # counting never warns


def test_window_skips_on_the_reverted_count_build(pool: GuestPool) -> None:
    kernel = count_build("count-revertfix")
    if kernel is None:
        pytest.skip(
            "no 6.1 count-revertfix build in the cache: "
            "`farm kernels build --source 6.1 --instrument count --revert-fix`"
        )
    results = trials(pool, kernel)
    windows = [r.window for r in results if r.window is not None]
    met = sum(w.entries for w in windows)
    assert met > 0, windows
    # a shared memfd page under migration is due for removal: the reverted code skips each one
    assert sum(w.skipped for w in windows) == met, windows
    assert all("WARNING:" not in r.console for r in results)
