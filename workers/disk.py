"""Disk hygiene on a worker host: console logs and worker logs stay under a cap.

Each guest's kernel console goes to ``cache_dir/consoles/<domain>.log``, written
by virtlogd (libvirt's ``stdio_handler = "logd"``, the default), which rotates
it at ``max_size`` (2 MiB) keeping ``max_backups`` (3) as ``<file>.0`` ...; the
pool deletes a retired guest's log and its backups. What remains are logs of
guests whose worker process was killed (hard time limit, SIGKILL, OOM) and the
logs of local workers (``cache_dir/logs``). ``tidy`` runs when a worker starts
and deletes the oldest of those first until each folder is under its cap. It
never deletes the console of a guest whose owning process is alive (the name
carries its pid) nor a file written in the last ``min_age_s``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

CONSOLES_MAX_BYTES = 1 << 30
LOGS_MAX_BYTES = 256 << 20
MIN_AGE_S = 300.0
_CONSOLE_NAME = re.compile(r"^zapfarm-(\d+)-[0-9a-f]+\.log(\.\d+)?$")


def owner_alive(path: Path) -> bool:
    """The console of a guest whose worker process still runs (so the guest may, too)."""
    m = _CONSOLE_NAME.match(path.name)
    if m is None:
        return False
    try:
        os.kill(int(m.group(1)), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def prune(
    folder: Path,
    max_bytes: int,
    *,
    keep: Callable[[Path], bool] = lambda _: False,
    min_age_s: float = MIN_AGE_S,
    now: float | None = None,
) -> list[Path]:
    """Delete the oldest files (by mtime) until ``folder`` holds at most ``max_bytes``.

    Files that ``keep`` protects or that changed within ``min_age_s`` count but
    are never deleted. Returns what was deleted.
    """
    now = time.time() if now is None else now
    files: list[tuple[float, int, Path]] = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(folder):
            with contextlib.suppress(FileNotFoundError):
                if entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    files.append((st.st_mtime, st.st_size, Path(entry.path)))
    total = sum(size for _, size, _ in files)
    deleted: list[Path] = []
    for mtime, size, path in sorted(files, key=lambda f: f[0]):
        if total <= max_bytes:
            break
        if now - mtime < min_age_s or keep(path):
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        total -= size
        deleted.append(path)
    return deleted


def tidy(
    cache_dir: Path,
    consoles_max: int = CONSOLES_MAX_BYTES,
    logs_max: int = LOGS_MAX_BYTES,
    min_age_s: float = MIN_AGE_S,
) -> list[Path]:
    """Cap ``cache_dir/consoles`` and ``cache_dir/logs``; returns the deleted files.

    Never raises: disk hygiene must not keep a worker from starting.
    """
    deleted: list[Path] = []
    try:
        deleted += prune(
            cache_dir / "consoles", consoles_max, keep=owner_alive, min_age_s=min_age_s
        )
        deleted += prune(cache_dir / "logs", logs_max, min_age_s=min_age_s)
    except OSError as exc:
        log.warning("disk hygiene failed: %s", exc)
    if deleted:
        log.info("disk hygiene: deleted %d old console/worker logs", len(deleted))
    return deleted
