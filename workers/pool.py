"""The guests of one worker process: one persistent guest per kernel.

Booting costs ~13 s under TCG against ~2 s for a trial, so a guest runs many
trials. It is replaced after anything that could taint the next trial: a
kernel report (``WARN_ON_ONCE`` fires once per boot), a dead or hung guest,
a trial whose mm outlived the agent's wait, or every ``reboot_every`` trials.
Before a kept guest runs the next trial, what it printed since the last
trial's end marker is read: a report there, or a guest that died meanwhile,
retires it, and the ``BootReport`` goes with the next trial's result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import libvirt

from farm.protocol import MAX_BOOT_CONSOLE_BYTES, BootReport, clip
from farm.settings import Settings
from farm.triage.engine import parse as parse_console
from workers.connection import open_connection
from workers.domain import NAME_PREFIX, find_emulator
from workers.probe import detect_virt_type
from workers.vm import Guest, GuestConfig, GuestError

log = logging.getLogger(__name__)


@dataclass
class GuestPool:
    conn: libvirt.virConnect
    initrd: Path
    console_dir: Path
    virt_type: str | None  # None: probe KVM on the first boot (verdict cached in probe_cache)
    probe_cache: Path | None = None
    memory_mb: int = 1024
    cpus: int = 2
    boot_deadline_s: float = 90.0
    reboot_every: int = 50
    connect: Callable[[], libvirt.virConnect] | None = None  # reopens a connection libvirtd closed
    guests: dict[str, Guest] = field(default_factory=dict)
    prior_boot: BootReport | None = None  # set by acquire(): the kept guest it gave up on

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
            connect=lambda: open_connection(settings.libvirt_uri),
        )

    def config(self, kernel_name: str, kernel: Path) -> GuestConfig:
        """The guest shape for this kernel; probes KVM against TCG on first use."""
        if self.virt_type is None:
            self.virt_type = self._probe(kernel_name, kernel)
        return self._config(kernel_name, kernel, self.virt_type)

    def _config(self, kernel_name: str, kernel: Path, virt_type: str) -> GuestConfig:
        return GuestConfig(
            kernel_name=kernel_name,
            kernel=kernel,
            initrd=self.initrd,
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
        self.guests.clear()
        self.conn = self.connect()
        prefix = f"{NAME_PREFIX}{os.getpid()}-"
        for dom in self.conn.listAllDomains():
            with contextlib.suppress(libvirt.libvirtError):
                if dom.name().startswith(prefix) and dom.isActive():
                    dom.destroy()
                    log.warning("destroyed %s, left from before libvirtd restarted", dom.name())

    def acquire(self, kernel_name: str, kernel: Path) -> tuple[Guest, bool]:
        """A booted guest for this kernel, and whether it was booted just now."""
        self.prior_boot = None
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
                "guest %s %s after trial %s: booting afresh",
                guest.name,
                "died" if report.died else "printed " + "; ".join(report.titles),
                report.after_trial,
            )
            self.prior_boot = report
            self.retire(kernel_name)
            guest = None
        if guest is not None:
            return guest, False
        guest = Guest(self.conn, self.config(kernel_name, kernel))
        guest.boot()  # GuestError propagates: the caller reports infra-error
        log.info(
            "booted %s (%s, %d nodes) in %.1f s",
            guest.name,
            guest.kernel_release,
            guest.numa_nodes,
            guest.boot_seconds,
        )
        self.guests[kernel_name] = guest
        return guest, True

    def release(self, kernel_name: str, *, tainted: bool) -> None:
        """After a trial: keep the guest, or retire it when the next trial could not trust it."""
        guest = self.guests.get(kernel_name)
        if guest is not None and (tainted or guest.trials >= self.reboot_every):
            self.retire(kernel_name)

    def retire(self, kernel_name: str) -> None:
        guest = self.guests.pop(kernel_name, None)
        if guest is not None:
            guest.destroy()
            guest.console_log.unlink(missing_ok=True)
            for rotated in guest.console_log.parent.glob(guest.console_log.name + ".*"):
                rotated.unlink(missing_ok=True)  # virtlogd's backups (<log>.0, <log>.1, ...)

    def close(self) -> None:
        for name in list(self.guests):
            self.retire(name)


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
