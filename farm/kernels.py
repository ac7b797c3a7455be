"""Guest kernels: the installed Debian kernel, and registering images by name and sha256."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

_VMLINUZ = re.compile(r"^vmlinuz-(?P<release>\d+\.\d+\.\d+.*)$")


class KernelNotFound(LookupError):
    """No usable kernel image; the message says how to get one."""


@dataclass(frozen=True)
class KernelImage:
    name: str
    release: str
    path: Path
    sha256: str
    source: str


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _version_key(release: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", release))


def installed_kernel(boot: Path = Path("/boot")) -> KernelImage:
    """The newest Debian kernel image in /boot (package linux-image-amd64)."""
    found = sorted(
        (m["release"], p)
        for p in boot.glob("vmlinuz-*")
        if (m := _VMLINUZ.match(p.name)) and p.is_file()
    )
    if not found:
        raise KernelNotFound(
            f"no kernel image in {boot}: install one with `apt-get install linux-image-amd64`"
        )
    release, path = max(found, key=lambda item: _version_key(item[0]))
    return KernelImage(
        name=f"debian-{release}",
        release=release,
        path=path,
        sha256=sha256_of(path),
        source="debian:installed",
    )
