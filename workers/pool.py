"""The guests of one worker process: one persistent guest per kernel.

Booting costs ~13 s under TCG against ~2 s for a trial, so a guest runs many
trials. It is replaced after anything that could taint the next trial: a
kernel report (``WARN_ON_ONCE`` fires once per boot), a dead or hung guest,
a trial whose mm outlived the agent's wait, or every ``reboot_every`` trials.
Before a kept guest runs the next trial, what it printed since the last
trial's end marker is read: a report there, or a guest that died meanwhile,
retires it, and the ``BootReport`` goes with the next trial's result.
With a snapshot store a replaced guest is restored from a memory image of a
freshly booted, ready guest (~0.5 s) and the pool boots only to make that
image, or when restoring fails (the image is then discarded and made again).
Each kernel boots the base image with its own modules appended (``initrd_for``),
and that image, not the base, is what a memory image is keyed on.
A guest left unused for ``idle_s`` is shut down (``retire_idle``): an idle TCG
guest still costs ~15% of a host CPU, and a worker serving many kernels would
otherwise keep one per kernel it ever ran; the next trial restores or boots one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import libvirt

from farm.artifacts.modules import ModuleError, with_modules
from farm.protocol import MAX_BOOT_CONSOLE_BYTES, BootReport, clip
from farm.settings import Settings
from farm.triage.engine import parse as parse_console
from workers.connection import open_connection
from workers.domain import NAME_PREFIX, find_emulator
from workers.probe import detect_virt_type
from workers.snapshot import (
    Slot,
    SnapshotError,
    SnapshotStore,
    image_inputs,
    image_key,
    owner_pid,
)
from workers.vm import Guest, GuestConfig, GuestError, evict

log = logging.getLogger(__name__)


@dataclass
class GuestPool:
    conn: libvirt.virConnect
    initrd: Path  # the base image: each kernel boots it with its modules appended (initrd_for)
    console_dir: Path
    virt_type: str | None  # None: probe KVM on the first boot (verdict cached in probe_cache)
    probe_cache: Path | None = None
    memory_mb: int = 1024
    cpus: int = 2
    boot_deadline_s: float = 90.0
    reboot_every: int = 50
    idle_s: float = 300.0  # a kept guest unused this long is shut down by retire_idle (0: never)
    connect: Callable[[], libvirt.virConnect] | None = None  # reopens a connection libvirtd closed
    snapshots: SnapshotStore | None = None  # None: every new life is a boot
    guests: dict[str, Guest] = field(default_factory=dict)
    prior_boot: BootReport | None = None  # set by acquire(): the kept guest it gave up on
    slots: dict[str, Slot] = field(default_factory=dict)  # kernel name -> this process's slot
    # held by whoever drives a trial, and by retire_idle: a guest in use is never retired
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    last_used: dict[str, float] = field(default_factory=dict)  # kernel name -> monotonic time
    # reports of guests retired while idle: each goes with its kernel's next trial
    pending: dict[str, BootReport] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, conn: libvirt.virConnect, settings: Settings, initrd: Path) -> GuestPool:
        """The one place guest settings become a pool (and so every GuestConfig)."""
        return cls(
            conn=conn,
            initrd=initrd,
            console_dir=settings.cache_dir / "consoles",
            virt_type=settings.virt_type,
            probe_cache=settings.cache_dir / "host-probe.json",
            memory_mb=settings.guest_memory_mb,
            cpus=settings.guest_cpus,
            boot_deadline_s=settings.boot_deadline_s,
            idle_s=settings.guest_idle_s,
            connect=lambda: open_connection(settings.libvirt_uri),
            snapshots=SnapshotStore(settings.cache_dir / "snapshots"),
        )

    def config(self, kernel_name: str, kernel: Path) -> GuestConfig:
        """The guest shape for this kernel; probes KVM against TCG on first use."""
        if self.virt_type is None:
            self.virt_type = self._probe(kernel_name, kernel)
        return self._config(kernel_name, kernel, self.virt_type)

    def initrd_for(self, kernel: Path) -> Path:
        """The base image with this kernel's own modules appended (farm.artifacts.modules)."""
        try:
            return with_modules(self.initrd, kernel)
        except (ModuleError, OSError) as exc:
            raise GuestError(
                f"cannot add the modules of {kernel} to the guest image: {exc}"
            ) from exc

    def _config(self, kernel_name: str, kernel: Path, virt_type: str) -> GuestConfig:
        return GuestConfig(
            kernel_name=kernel_name,
            kernel=kernel,
            initrd=self.initrd_for(kernel),
            console_dir=self.console_dir,
            virt_type=virt_type,
            memory_mb=self.memory_mb,
            cpus=self.cpus,
            boot_deadline_s=self.boot_deadline_s,
        )

    def _probe(self, kernel_name: str, kernel: Path) -> str:
        base = self._config(kernel_name, kernel, "qemu")
        return detect_virt_type(
            lambda virt, deadline: Guest(
                self.conn, dataclasses.replace(base, virt_type=virt, boot_deadline_s=deadline)
            ),
            self.probe_cache or self.console_dir / "host-probe.json",
            find_emulator(),
        )

    def connected(self) -> bool:
        try:
            return bool(self.conn.isAlive())
        except libvirt.libvirtError:
            return False

    def reconnect(self) -> None:
        """After libvirtd restarted: forget the guests (gone with the old connection, which
        AUTODESTROY tied them to) and open a new connection; destroy any of this process's
        domains that outlived it."""
        if self.connect is None:
            return
        for guest in self.guests.values():
            guest.channel = None  # its stream died with the connection
            guest.dom = None
            guest.destroy()  # no domain left to touch: ends a restored guest's guardian
        self.guests.clear()
        self.conn = self.connect()
        prefix = f"{NAME_PREFIX}{os.getpid()}-"
        host = socket.gethostname()
        for dom in self.conn.listAllDomains():
            with contextlib.suppress(libvirt.libvirtError):
                # a booted guest has our pid in its name; a restored one (no AUTODESTROY:
                # it outlives libvirtd's restart) only in its owner metadata
                ours = dom.name().startswith(prefix)
                ours = ours or owner_pid(dom.XMLDesc(), host) == os.getpid()
                if ours and dom.isActive():
                    dom.destroy()
                    log.warning("destroyed %s, left from before libvirtd restarted", dom.name())

    def acquire(self, kernel_name: str, kernel: Path) -> tuple[Guest, bool]:
        """A booted guest for this kernel, and whether it was booted just now."""
        self.prior_boot = self.pending.pop(kernel_name, None)
        self.last_used[kernel_name] = time.monotonic()
        if not self.connected():
            try:
                self.reconnect()
            except Exception as exc:  # reported as the infra error it is
                raise GuestError(f"libvirtd is unreachable and reconnecting failed: {exc}") from exc
        guest = self.guests.get(kernel_name)
        if guest is not None and guest.config.kernel != kernel:
            self.retire(kernel_name)
            guest = None
        if guest is not None and (report := between_trials(guest)) is not None:
            log.warning(
                "guest %s %s after trial %s: replacing it",
                guest.name,
                happened(report),
                report.after_trial,
            )
            self.prior_boot = report
            self.retire(kernel_name)
            guest = None
        if guest is not None:
            return guest, False
        config = self.config(kernel_name, kernel)
        slot = self._slot(kernel_name, config) if self.snapshots is not None else None
        guest = self._restore(slot, config) if slot is not None else None
        if guest is None:
            guest = self._boot(slot, config)  # GuestError propagates: the caller reports it
        self.guests[kernel_name] = guest
        return guest, True

    def _boot(self, slot: Slot | None, config: GuestConfig) -> Guest:
        """A booted guest; with a slot, saved into the slot's image and restored from it."""
        if slot is None:
            guest = Guest(self.conn, config)
            guest.boot()
            log.info(
                "booted %s (%s, %d nodes) in %.1f s",
                guest.name,
                guest.kernel_release,
                guest.numa_nodes,
                guest.boot_seconds,
            )
            return guest
        if not evict(self.conn, slot.domain_name):
            log.warning("%s belongs to a live process: booting without an image", slot.domain_name)
            return self._boot(None, config)
        builder = Guest(self.conn, config, domain_name=slot.domain_name)
        builder.boot()
        started = time.monotonic()
        try:
            slot.staging.unlink(missing_ok=True)
            builder.save(slot.staging)
            save_seconds = time.monotonic() - started
            slot.commit(
                kernel_name=config.kernel_name,
                inputs=self._inputs(config),
                ready=builder.ready,
                boot_seconds=builder.boot_seconds,
                save_seconds=save_seconds,
            )
        except (GuestError, OSError) as exc:
            slot.discard()
            if builder.alive():
                log.warning("cannot save %s, running it without an image: %s", builder.name, exc)
                return builder
            log.warning("cannot save %s, booting without an image: %s", builder.name, exc)
            builder.destroy()
            return self._boot(None, config)
        assert self.snapshots is not None
        for path in self.snapshots.prune(slot, config.kernel_name):
            log.info("deleted stale guest image %s", path)
        log.info(
            "booted %s (%s, %d nodes) in %.1f s, saved its image in %.1f s",
            builder.name,
            builder.kernel_release,
            builder.numa_nodes,
            builder.boot_seconds,
            save_seconds,
        )
        guest = self._restore(slot, config)
        if guest is None:
            return self._boot(None, config)
        guest.boot_seconds += builder.boot_seconds + save_seconds  # what this life cost
        return guest

    def _restore(self, slot: Slot, config: GuestConfig) -> Guest | None:
        """A guest restored from the slot's image, or None (no image, or it failed: discarded)."""
        meta = slot.metadata()
        if meta is None:
            return None
        if not evict(self.conn, slot.domain_name):
            return None
        guest = Guest(self.conn, config, domain_name=slot.domain_name)
        try:
            guest.restore(slot.image, expect_kernel=str(meta["ready"].get("kernel", "")))
        except GuestError as exc:
            log.warning("discarding guest image %s: %s", slot.image, exc)
            slot.discard()
            return None
        log.info("restored %s (life %s) in %.2f s", guest.name, guest.boot_id, guest.boot_seconds)
        return guest

    def _inputs(self, config: GuestConfig) -> dict[str, object]:
        return image_inputs(
            self.conn,
            kernel=config.kernel,
            initrd=config.initrd,
            virt_type=config.virt_type,
            memory_mb=config.memory_mb,
            cpus=config.cpus,
        )

    def _slot(self, kernel_name: str, config: GuestConfig) -> Slot | None:
        """This process's image slot for the kernel's current key (None: no image used)."""
        assert self.snapshots is not None
        try:
            key = image_key(self._inputs(config))
        except (OSError, SnapshotError, libvirt.libvirtError) as exc:
            log.warning("guest images disabled for %s: %s", kernel_name, exc)
            return None
        slot = self.slots.get(kernel_name)
        if slot is not None and slot.key == key:
            return slot
        if slot is not None:
            slot.release()
            del self.slots[kernel_name]
        try:
            slot = self.snapshots.claim(key)
        except (OSError, SnapshotError) as exc:
            log.warning("guest images disabled for %s: %s", kernel_name, exc)
            return None
        if slot is None:
            log.warning(
                "all %d guest image slots of %s are in use: booting",
                self.snapshots.max_slots,
                kernel_name,
            )
            return None
        self.slots[kernel_name] = slot
        return slot

    def release(self, kernel_name: str, *, tainted: bool) -> None:
        """After a trial: keep the guest, or retire it when the next trial could not trust it."""
        self.last_used[kernel_name] = time.monotonic()
        guest = self.guests.get(kernel_name)
        if guest is not None and (tainted or guest.trials >= self.reboot_every):
            self.retire(kernel_name)

    def retire_idle(self, now: float | None = None) -> list[str]:
        """Shut down the guests unused for ``idle_s``; the kernel names whose guest went.

        Takes the pool's lock, so a guest is never retired in the middle of a
        trial. What a guest printed since its last trial is read first: a report
        waits in ``pending`` for that kernel's next trial, as a kept guest's would.
        """
        if self.idle_s <= 0:
            return []
        retired = []
        with self.lock:
            now = time.monotonic() if now is None else now
            for name, guest in list(self.guests.items()):
                if now - self.last_used.get(name, now) < self.idle_s:
                    continue
                report = between_trials(guest)
                if report is not None:
                    log.warning(
                        "idle guest %s %s after trial %s: its kernel's next trial reports it",
                        guest.name,
                        happened(report),
                        report.after_trial,
                    )
                    self.pending[name] = report
                self.retire(name)
                retired.append(name)
        return retired

    def retire(self, kernel_name: str) -> None:
        guest = self.guests.pop(kernel_name, None)
        if guest is not None:
            guest.destroy()
            guest.console_log.unlink(missing_ok=True)
            for rotated in guest.console_log.parent.glob(guest.console_log.name + ".*"):
                rotated.unlink(missing_ok=True)  # virtlogd's backups (<log>.0, <log>.1, ...)

    def close(self) -> None:
        with self.lock:
            for name in list(self.guests):
                self.retire(name)
            for slot in self.slots.values():
                slot.release()
            self.slots.clear()


def happened(report: BootReport) -> str:
    """What a guest did between trials, for the worker's log."""
    return "died" if report.died else "printed " + "; ".join(report.titles)


def between_trials(guest: Guest) -> BootReport | None:
    """The boot's report when a kept guest printed a kernel report or died since its last trial."""
    text = guest.since_last_trial()
    alive = guest.alive()
    reports = parse_console(text) if text else []
    if alive and not reports:
        return None
    console, _ = clip(text, MAX_BOOT_CONSOLE_BYTES)
    return BootReport(
        boot_id=guest.boot_id,
        kernel_release=guest.kernel_release,
        after_trial=guest.last_trial[:256] or "(none)",
        died=not alive,
        titles=[r.title[:256] for r in reports[:16]],
        console=console,
    )
