"""Memory images of booted, ready guests: recovery by restore instead of reboot.

A TCG boot costs ~9-13 s; restoring a guest saved right after its agent said
"ready" costs well under a second. So after a kernel report, a hang or a dead
guest the pool restores a fresh life from an image (``virDomainRestoreFlags``)
and only boots when there is no usable image.

An image is valid for one (kernel sha256, initramfs sha256, guest shape,
emulator, libvirt) combination: those inputs hash to its key, so any change
makes a new image and the stale one of the same kernel name is deleted.
libvirt refuses to restore an image under another domain name or UUID (an ABI
check), so a restored guest keeps the name the image was saved with and two
live guests cannot share an image: each concurrent guest of a host claims a
*slot* (an flock held for the life of the worker process) and every slot has
its own image. The name carries a hash of the image folder, so two farms on
one host (two checkouts) never collide.

A restored domain is not started with AUTODESTROY (libvirt has no such flag
for restore): its owner (``host:pid`` in the domain's metadata, rewritten on
every restore) is what ``reap_orphans`` uses to destroy it when the worker
process died without cleaning up.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import IO, Any

import libvirt

from workers.domain import CMDLINE, NAME_PREFIX, find_emulator

log = logging.getLogger(__name__)

IMAGE_FORMAT = 2  # bump when what an image holds (agent state at save time) changes meaning
MAX_SLOTS = 8  # concurrent guests of one kernel on one host that can each have an image
METADATA_NS = "https://zapfarm.invalid/xmlns/guest/1"


class SnapshotError(RuntimeError):
    """An image cannot be used (missing, stale, corrupt); the pool boots instead."""


_digests: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of a file, cached per (path, size, mtime) for this process."""
    st = path.stat()
    memo = (str(path), st.st_size, st.st_mtime_ns)
    if memo not in _digests:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _digests[memo] = h.hexdigest()
    return _digests[memo]


def image_inputs(
    conn: libvirt.virConnect,
    *,
    kernel: Path,
    initrd: Path,
    virt_type: str,
    memory_mb: int,
    cpus: int,
) -> dict[str, Any]:
    """Everything a memory image depends on; the image key is their hash."""
    emulator = Path(find_emulator())
    est = emulator.stat()
    template = resources.files("workers").joinpath("templates/domain.xml").read_bytes()
    return {
        "format": IMAGE_FORMAT,
        "kernel_sha256": file_sha256(kernel),
        "initrd_sha256": file_sha256(initrd),
        "virt_type": virt_type,
        "memory_mb": memory_mb,
        "cpus": cpus,
        "cmdline": CMDLINE,
        "template_sha256": hashlib.sha256(template).hexdigest(),
        "emulator": f"{emulator}:{est.st_size}:{est.st_mtime_ns}",
        "hypervisor_version": conn.getVersion(),
        "libvirt_version": conn.getLibVersion(),
    }


def image_key(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def restore_xml(saved: str, *, owner: str, console_log: Path, kernel: Path, initrd: Path) -> str:
    """The saved domain XML for a new life: new owner, console file and image paths.

    Name and UUID stay (libvirt's ABI check refuses a change); the kernel and
    initramfs paths may differ from the builder's (a copy QEMU can read) as
    long as their content is the same, which the image key guarantees.
    """
    ET.register_namespace("zapfarm", METADATA_NS)
    try:
        root = ET.fromstring(saved)
    except ET.ParseError as exc:
        raise SnapshotError(f"the image's domain XML does not parse: {exc}") from exc

    def one(path: str, namespaces: dict[str, str] | None = None) -> ET.Element:
        found = root.findall(path, namespaces or {})
        if len(found) != 1:
            raise SnapshotError(f"the image's domain XML has {len(found)} {path} elements, not 1")
        return found[0]

    one("os/kernel").text = str(kernel)
    one("os/initrd").text = str(initrd)
    one("metadata/z:guest/z:owner", {"z": METADATA_NS}).text = owner
    serials = [s for s in root.findall("devices/serial") if s.get("type") == "file"]
    consoles = [c for c in root.findall("devices/console") if c.get("type") == "file"]
    if len(serials) != 1:
        raise SnapshotError(f"the image's domain XML has {len(serials)} file serials, not 1")
    for dev in serials + consoles:
        source = dev.find("source")
        if source is None:
            raise SnapshotError("the image's console device has no <source>")
        source.set("path", str(console_log))
    return ET.tostring(root, encoding="unicode")


def saved_name(xml: str) -> str:
    try:
        name = ET.fromstring(xml).findtext("name") or ""
    except ET.ParseError as exc:
        raise SnapshotError(f"the image's domain XML does not parse: {exc}") from exc
    return name


@dataclass
class Slot:
    """One image of one key, used by this process alone while it holds the lock."""

    folder: Path
    key: str
    number: int
    lock: IO[bytes] | None = field(default=None, repr=False)

    @property
    def stem(self) -> str:
        return f"{self.key}-{self.number}"

    @property
    def image(self) -> Path:
        return self.folder / f"{self.stem}.save"

    @property
    def metadata_path(self) -> Path:
        return self.folder / f"{self.stem}.json"

    @property
    def staging(self) -> Path:
        """Where a new image is saved before it replaces the old one."""
        return self.folder / f"{self.stem}.save.new"

    @property
    def domain_name(self) -> str:
        """The guest's name in this slot's image: fixed for the image's life."""
        where = hashlib.sha256(f"{self.folder.resolve()}\0{self.key}".encode()).hexdigest()
        return f"{NAME_PREFIX}snap-{where[:12]}-{self.number}"

    def metadata(self) -> dict[str, Any] | None:
        """The image's metadata if the image is there and belongs to this slot, else None."""
        try:
            meta = json.loads(self.metadata_path.read_text())
            size = self.image.stat().st_size
        except (OSError, ValueError):
            return None
        if (
            not isinstance(meta, dict)
            or meta.get("key") != self.key
            or meta.get("domain_name") != self.domain_name
            or meta.get("size") != size
            or not isinstance(meta.get("ready"), dict)
        ):
            return None
        return meta

    def commit(
        self,
        *,
        kernel_name: str,
        inputs: dict[str, Any],
        ready: dict[str, Any],
        boot_seconds: float,
        save_seconds: float,
    ) -> None:
        """Make the staged image this slot's image, with its metadata."""
        meta = {
            "key": self.key,
            "kernel_name": kernel_name,
            "domain_name": self.domain_name,
            "inputs": inputs,
            "ready": ready,
            "size": self.staging.stat().st_size,
            "created_at": time.time(),
            "boot_seconds": round(boot_seconds, 3),
            "save_seconds": round(save_seconds, 3),
        }
        self.metadata_path.unlink(missing_ok=True)
        self.staging.replace(self.image)
        tmp = self.metadata_path.with_suffix(".json.new")
        tmp.write_text(json.dumps(meta, indent=1, sort_keys=True))
        tmp.replace(self.metadata_path)

    def discard(self) -> None:
        """Forget this slot's image (corrupt, or refused by libvirt): the next life boots."""
        for path in (self.metadata_path, self.image, self.staging):
            path.unlink(missing_ok=True)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.close()
            self.lock = None


@dataclass
class SnapshotStore:
    """The image folder of a host (the farm's cache); hands out slots."""

    folder: Path
    max_slots: int = MAX_SLOTS

    def prepare(self) -> None:
        """Create the folder; libvirtd writes and reads the images (as root) through it."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.folder.chmod(0o755)
        except OSError as exc:
            raise SnapshotError(
                f"cannot create the guest image folder {self.folder}: {exc}; set cache_dir "
                "(FARM_CACHE_DIR) to a writable folder"
            ) from exc

    def claim(self, key: str) -> Slot | None:
        """The first free slot of ``key``, locked for this process; None when all are taken."""
        self.prepare()
        for number in range(self.max_slots):
            slot = Slot(self.folder, key, number)
            lock = (self.folder / f"{slot.stem}.lock").open("ab")
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                lock.close()
                continue
            slot.lock = lock
            return slot
        return None

    def prune(self, keep: Slot, kernel_name: str) -> list[Path]:
        """Delete the images of ``kernel_name`` under other keys (stale) whose slot is free."""
        deleted: list[Path] = []
        for meta_path in self.folder.glob("*.json"):
            stem = meta_path.name[: -len(".json")]
            if stem == keep.stem:
                continue
            try:
                meta = json.loads(meta_path.read_text())
            except (OSError, ValueError):
                continue
            if not isinstance(meta, dict) or meta.get("kernel_name") != kernel_name:
                continue
            if meta.get("key") == keep.key:
                continue  # another slot of the same key: still good
            lock_path = self.folder / f"{stem}.lock"
            with lock_path.open("ab") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # in use by a live process
                for path in (meta_path, self.folder / f"{stem}.save"):
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                        deleted.append(path)
        return deleted


def owner_pid(xml: str, host: str) -> int | None:
    """The pid in a farm domain's ``<zapfarm:owner>host:pid</zapfarm:owner>``, if on ``host``."""
    ns = f"{{{METADATA_NS}}}"
    try:
        owner = ET.fromstring(xml).findtext(f"metadata/{ns}guest/{ns}owner")
    except ET.ParseError:
        return None
    if not owner or ":" not in owner:
        return None
    owner_host, _, pid = owner.rpartition(":")
    if owner_host != host or not pid.isdigit():
        return None
    return int(pid)
