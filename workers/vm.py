"""A trial guest: boot a transient libvirt domain, run trials through its agent, destroy it.

A booted guest is started with AUTODESTROY, so if the worker process dies its
libvirt connection closes and libvirtd takes the guest with it. A guest can
also start its life from a memory image (``restore``, workers/snapshot.py);
libvirt has no AUTODESTROY for a restore, so a guardian process (``sh`` +
``virsh``) waits on a pipe only this process holds and destroys the domain
when the pipe closes: the same guarantee (``reap_orphans`` is the last
resort). The kernel console (serial0) goes to a file per life; each trial's
share of it is cut between the agent's ``zapfarm: trial <id> begin`` and
``end`` markers, so boot-time messages never belong to a trial.
What comes after a trial's end marker and before the next trial is the
boot's: ``since_last_trial`` reads it, and the pool replaces a guest that
printed a report there.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libvirt

from farm.protocol import begin_marker, end_marker
from farm.timing import ANSWER_GRACE_S, KILL_WAIT_S, MARKER_WAIT_S, NO_PROGRESS_S, ProgressWatch
from workers.channel import Channel, ChannelError
from workers.domain import NAME_PREFIX, DomainSpec, render
from workers.snapshot import SnapshotError, owner_pid, restore_xml, saved_name

POLL_S = 1.0  # how often the wait for an answer looks at the console and the connection
MAX_CONSOLE_READ = 4 << 20  # console bytes read per trial; the excerpt keeps 256 KiB of them
# sh -c GUARDIAN uri domain-id owner: on EOF, destroy the domain if this owner still owns it
GUARDIAN = (
    'read -r _; xml=$(virsh -q -c "$0" dumpxml "$1" 2>/dev/null) || exit 0; '
    'case "$xml" in *"<zapfarm:owner>$2</zapfarm:owner>"*) '
    'exec virsh -q -c "$0" destroy "$1" >/dev/null 2>&1;; esac'
)
RESUME_DEADLINE_S = 15.0  # a restored agent answers "resume" within this, or the image is bad
SHARED_IMAGES = Path("/var/lib/zapfarm/images")


class GuestError(RuntimeError):
    """The guest could not be booted or driven: an infrastructure error."""


class GuestDied(RuntimeError):
    """The guest stopped while a trial ran: panic, reset or destroyed."""


@dataclass(frozen=True)
class GuestConfig:
    kernel_name: str
    kernel: Path
    initrd: Path
    console_dir: Path
    virt_type: str = "qemu"
    memory_mb: int = 1024
    cpus: int = 2
    boot_deadline_s: float = 90.0


class DomainState:
    """What libvirt says about a guest whose channel broke or went quiet (``Guest.state``)."""

    RUNNING = "running"
    PAUSED = "paused"
    CRASHED = "crashed"  # libvirt saw the guest crash (or shut off for that reason)
    SHUTOFF = "shutoff"  # stopped for another reason (destroyed, reset with on_reboot=destroy)
    GONE = "gone"  # no such domain any more
    UNREACHABLE = "unreachable"  # libvirtd does not answer: nothing is known about the guest


@dataclass
class TrialRun:
    """What one trial produced on the guest, before validation."""

    answer: dict[str, Any] | None  # the agent's result message, None if it never came
    console: str
    broken: str | None = None  # why the control channel broke, if it did
    stalled: bool = False  # no heartbeat (and, before the cap, no console) for the window
    program_stalled: bool = False  # the agent beat, but the program's CPU time stood still
    state: str = DomainState.RUNNING  # libvirt's word on the domain when no answer came
    heartbeats: int = 0

    @property
    def died(self) -> bool:
        """The guest stopped in a way only the guest can cause (libvirt saw a crash)."""
        return self.answer is None and self.state == DomainState.CRASHED

    @property
    def hung(self) -> bool:
        """The guest runs but stopped making progress: no heartbeat, no console."""
        return self.answer is None and self.stalled and self.state == DomainState.RUNNING

    # host-side seconds: request sent -> answer, answer -> end marker in the file, excerpt cut
    host_s: dict[str, float] = field(default_factory=dict)


@dataclass
class Guest:
    conn: libvirt.virConnect
    config: GuestConfig
    boot_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])  # this life's id
    domain_name: str = ""  # fixed by the memory image this guest is saved to or restored from
    dom: libvirt.virDomain | None = None
    channel: Channel | None = None
    ready: dict[str, Any] = field(default_factory=dict)
    boot_seconds: float = 0.0
    trials: int = 0
    vm_knobs: tuple[int, str] = (100, "none")  # what the guest was booted with
    console_mark: int = 0  # console bytes that belong to the boot or a trial already cut
    last_trial: str = ""
    restored: bool = False  # this life started from a memory image, not a boot
    restore_phases: dict[str, float] = field(default_factory=dict)  # seconds per restore step
    guardian: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return self.domain_name or f"{NAME_PREFIX}{os.getpid()}-{self.boot_id}"

    @property
    def owner(self) -> str:
        return f"{socket.gethostname()}:{os.getpid()}"

    @property
    def console_log(self) -> Path:
        """One file per life, named for the owning process (workers/disk.py keeps it)."""
        return self.config.console_dir / f"{NAME_PREFIX}{os.getpid()}-{self.boot_id}.log"

    @property
    def numa_nodes(self) -> int:
        nodes = self.ready.get("numa_nodes")
        return nodes if isinstance(nodes, int) and 0 <= nodes <= 1024 else 0

    @property
    def kernel_release(self) -> str:
        return str(self.ready.get("kernel", ""))[:256]

    def spec(self, kernel: Path, initrd: Path) -> DomainSpec:
        return DomainSpec(
            name=self.name,
            kernel_name=self.config.kernel_name,
            kernel=kernel,
            initrd=initrd,
            console_log=self.console_log,
            virt_type=self.config.virt_type,
            memory_mb=self.config.memory_mb,
            cpus=self.config.cpus,
            owner=self.owner,
        )

    def boot(self) -> None:
        """Start the domain and wait for the agent's ready message."""
        spec = self.spec(qemu_readable(self.config.kernel), qemu_readable(self.config.initrd))
        self.config.console_dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        try:
            self.dom = self.conn.createXML(render(spec), libvirt.VIR_DOMAIN_START_AUTODESTROY)
            self.channel = Channel(self.conn, self.dom)
        except libvirt.libvirtError as exc:
            self.destroy()
            raise GuestError(f"cannot start guest {self.name}: {exc}") from exc
        try:
            ready = self.channel.receive(self.config.boot_deadline_s, want="ready")
        except ChannelError as exc:
            self.destroy()
            raise GuestError(f"guest {self.name} died while booting: {exc}{self._tail()}") from exc
        if ready is None:
            self.destroy()
            raise GuestError(
                f"guest {self.name} sent no ready message within "
                f"{self.config.boot_deadline_s:.0f} s{self._tail()}"
            )
        self.ready = ready
        self.boot_seconds = time.monotonic() - started
        self.console_mark = self._console_size()  # boot messages are the boot's

    def save(self, image: Path) -> None:
        """Stop this ready guest into a memory image (``virDomainSave``); the domain is gone after.

        Call it only between trials: the image holds the agent waiting for its next request.
        """
        if self.dom is None or self.channel is None:
            raise GuestError("guest is not booted")
        try:  # the agent beacons from now on, so a restored life connects at once
            self.channel.send({"op": "save", "id": f"save-{self.boot_id}"})
            answer = self.channel.receive(RESUME_DEADLINE_S, want="saving")
        except ChannelError as exc:
            raise GuestError(f"guest {self.name} died before its save: {exc}") from exc
        if answer is None:
            raise GuestError(f"guest {self.name} did not answer save")
        self.channel.close()
        self.channel = None
        try:
            self.dom.save(str(image))
        except libvirt.libvirtError as exc:
            raise GuestError(
                f"cannot save guest {self.name} to {image}: {exc} (libvirtd writes it: the folder "
                "must be writable by root and have room for the guest's memory)"
            ) from exc
        self.dom = None

    def restore(self, image: Path, expect_kernel: str = "") -> None:
        """Start this life from a memory image and hand the agent its new epoch.

        The domain keeps the image's name and UUID; its owner, console file and
        image paths are this life's. The agent answers "resume" with what its
        "ready" carried (docs/protocol.md), which must name ``expect_kernel``.
        Raises GuestError, after destroying whatever started, if any step fails.
        """
        self.config.console_dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        try:
            saved = self.conn.saveImageGetXMLDesc(str(image), 0)
            name = saved_name(saved)
            if self.domain_name and name != self.domain_name:
                raise SnapshotError(f"image {image} holds guest {name!r}, not {self.domain_name!r}")
            self.domain_name = name
            xml = restore_xml(
                saved,
                owner=self.owner,
                console_log=self.console_log,
                kernel=qemu_readable(self.config.kernel),
                initrd=qemu_readable(self.config.initrd),
            )
            self.conn.restoreFlags(str(image), xml, libvirt.VIR_DOMAIN_SAVE_RUNNING)
            self.dom = self.conn.lookupByName(name)
            self._guard()
            self.restore_phases["restore"] = time.monotonic() - started
            self.channel = Channel(self.conn, self.dom)
            self.channel.send(
                {"op": "resume", "id": self.boot_id, "time_ms": int(time.time() * 1000)}
            )
            wait_until = time.monotonic() + RESUME_DEADLINE_S
            while True:
                answer = self.channel.receive(max(0.0, wait_until - time.monotonic()))
                if answer is None or answer.get("id") == self.boot_id:
                    break
            if answer is not None and answer.get("op") != "resumed":
                raise SnapshotError(f"the agent refused resume: {str(answer)[:300]}")
        except (libvirt.libvirtError, SnapshotError, ChannelError) as exc:
            self.destroy()
            raise GuestError(f"cannot restore guest {self.name} from {image}: {exc}") from exc
        if answer is None:
            self.destroy()
            raise GuestError(
                f"restored guest {self.name} did not answer resume within "
                f"{RESUME_DEADLINE_S:.0f} s{self._tail()}"
            )
        if expect_kernel and answer.get("kernel") != expect_kernel:
            self.destroy()
            raise GuestError(
                f"image {image} runs kernel {str(answer.get('kernel'))[:100]!r}, "
                f"not {expect_kernel!r}"
            )
        self.ready = answer
        self.restored = True
        self.boot_seconds = time.monotonic() - started
        self.restore_phases["resume"] = self.boot_seconds - self.restore_phases["restore"]

    def _guard(self) -> None:
        """Destroy the domain when this process dies, as AUTODESTROY does for a boot.

        The guardian sits in its own session (a worker's process group can be
        SIGKILLed as a whole) and blocks reading a pipe whose write end only this
        process holds (close-on-exec). It destroys the domain by its id, and only
        while that domain's owner is still this process: a restarted libvirtd
        numbers domains from 1 again, and the next life of the same image has
        the same name and UUID but another owner.
        """
        assert self.dom is not None
        self.guardian = subprocess.Popen(
            ["sh", "-c", GUARDIAN, self.conn.getURI(), str(self.dom.ID()), self.owner],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def run(
        self,
        trial_id: str,
        argv: list[str],
        deadline_s: float,
        *,
        no_progress_s: float = NO_PROGRESS_S,
    ) -> TrialRun:
        """Run one trial program in the guest and cut its console excerpt.

        Waits for the answer as long as the guest makes progress (heartbeats from
        the agent, console output), up to the agent's own deadline plus its kill
        wait and a grace; a guest silent for ``no_progress_s`` is stalled. When no
        answer came, libvirt is asked what became of the domain (``state``), so
        that a libvirtd restart is not mistaken for a dead kernel.
        """
        if self.channel is None:
            raise GuestError("guest is not booted")
        self.trials += 1
        self.last_trial = trial_id
        offset = self.console_mark
        request = {"op": "run", "id": trial_id, "argv": argv, "deadline_ms": int(deadline_s * 1000)}
        answer: dict[str, Any] | None = None
        broken: str | None = None
        started = time.monotonic()
        watch = ProgressWatch(started, no_progress_s)
        watch.console(started, self._console_size())
        cap = started + deadline_s + KILL_WAIT_S + ANSWER_GRACE_S
        try:
            self.channel.send(request)
            while answer is None:
                now = time.monotonic()
                watch.console(now, self._console_size())
                if now >= cap or watch.guest_stalled(now):
                    break
                if not self._connected():
                    broken = "the libvirt connection closed (libvirtd restarted or gone?)"
                    break
                message = self.channel.receive(max(0.0, min(POLL_S, cap - now)))
                if message is None or message.get("id") != trial_id:
                    continue  # a poll tick, a late answer to an earlier request, a frame error
                op = message.get("op")
                if op == "heartbeat":
                    cpu = message.get("cpu_ms")
                    valid = isinstance(cpu, int) and not isinstance(cpu, bool) and cpu >= 0
                    watch.heartbeat(time.monotonic(), cpu if valid else None)
                elif op == "result":
                    answer = message
                elif op == "error":  # the agent refused the request
                    answer = {"status": "error", "error": str(message.get("error", ""))[:500]}
        except ChannelError as exc:
            broken = str(exc)[:500]
        now = time.monotonic()
        state = DomainState.RUNNING
        if answer is not None:
            self._wait_for(end_marker(trial_id), offset)
        else:
            state = self.state()
            time.sleep(1.0)  # let a panic's last lines reach the file
        marked = time.monotonic()
        size = self._console_size()
        base = offset if offset <= size else 0  # rotated by virtlogd: _read_console starts over
        data = self._read_console(offset)
        _, excerpt, used = split_trial(data, trial_id)
        if used <= MAX_CONSOLE_READ // 2 or size - base <= MAX_CONSOLE_READ:
            self.console_mark = base + used
        else:  # a read cut in its middle: its offsets past the head are not the file's
            self.console_mark = size
        return TrialRun(
            answer=answer,
            console=excerpt.decode("utf-8", errors="replace"),
            host_s={
                "answer": now - started,
                "marker": marked - now,
                "excerpt": time.monotonic() - marked,
            },
            broken=broken,
            stalled=answer is None
            and broken is None
            and (watch.guest_stalled(now) or watch.agent_silent(now)),
            program_stalled=watch.program_stalled(now),
            state=state,
            heartbeats=watch.heartbeats,
        )

    def since_last_trial(self) -> str:
        """What the guest printed after the last trial's end marker (or since boot)."""
        data = self._read_console(self.console_mark)
        return data.decode("utf-8", errors="replace")

    def _connected(self) -> bool:
        try:
            return bool(self.conn.isAlive())
        except libvirt.libvirtError:
            return False

    def state(self) -> str:
        """libvirt's word on this guest (a ``DomainState``), asked before blaming the kernel."""
        if self.dom is None:
            return DomainState.GONE
        if not self._connected():
            return DomainState.UNREACHABLE
        try:
            state, reason = self.dom.state()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return DomainState.GONE
            return DomainState.UNREACHABLE
        if state == libvirt.VIR_DOMAIN_CRASHED or (
            state == libvirt.VIR_DOMAIN_SHUTOFF and reason == libvirt.VIR_DOMAIN_SHUTOFF_CRASHED
        ):
            return DomainState.CRASHED
        if state in (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTDOWN):
            return DomainState.SHUTOFF
        if state == libvirt.VIR_DOMAIN_PAUSED:
            return DomainState.PAUSED
        return DomainState.RUNNING

    def alive(self) -> bool:
        if self.dom is None:
            return False
        try:
            return bool(self.dom.isActive())
        except libvirt.libvirtError:
            return False

    def destroy(self) -> None:
        """Stop the guest; a domain that is already gone is not an error."""
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.dom is not None:
            try:
                self.dom.destroy()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN and self.alive():
                    raise GuestError(f"cannot destroy guest {self.name}: {exc}") from exc
            self.dom = None
        if self.guardian is not None:
            self.guardian.kill()  # before it reads EOF: nothing left for it to destroy
            self.guardian.wait()
            if self.guardian.stdin is not None:
                self.guardian.stdin.close()
            self.guardian = None

    def apply_vm_knobs(self, cpu_quota_pct: int, vcpu_pin: str, period_us: int = 100_000) -> None:
        """A trial's VM-level timing knobs, set on the running guest (only what changed)."""
        if self.dom is None:
            raise GuestError("guest is not booted")
        wanted = (cpu_quota_pct, vcpu_pin)
        if wanted == self.vm_knobs:
            return
        quota = -1 if cpu_quota_pct >= 100 else max(1000, period_us * cpu_quota_pct // 100)
        host_cpus = self.conn.getInfo()[2]
        try:
            self.dom.setSchedulerParameters({"vcpu_period": period_us, "vcpu_quota": quota})
            for vcpu in range(self.config.cpus):
                if vcpu_pin == "same":
                    chosen = {0}
                elif vcpu_pin == "split":
                    chosen = {vcpu % host_cpus}
                else:
                    chosen = set(range(host_cpus))
                self.dom.pinVcpu(vcpu, tuple(cpu in chosen for cpu in range(host_cpus)))
        except libvirt.libvirtError as exc:
            raise GuestError(f"cannot apply vCPU quota/pinning to {self.name}: {exc}") from exc
        self.vm_knobs = wanted

    # console file ------------------------------------------------------

    def _console_size(self) -> int:
        try:
            return self.console_log.stat().st_size
        except FileNotFoundError:
            return 0

    def _read_console(self, offset: int) -> bytes:
        """The console from ``offset`` on, at most MAX_CONSOLE_READ bytes (head and tail).

        A guest kernel can flood its console; virtlogd caps the file (max_size), but
        the worker must stay bounded even where it does not.
        """
        try:
            with self.console_log.open("rb") as f:
                size = f.seek(0, os.SEEK_END)
                start = offset if offset <= size else 0  # rotated by virtlogd: start over
                f.seek(start)
                if size - start <= MAX_CONSOLE_READ:
                    return f.read()
                half = MAX_CONSOLE_READ // 2
                head = f.read(half)
                f.seek(size - half)
                skipped = b"\n[... zapfarm: %d console bytes not read ...]\n" % (
                    size - start - 2 * half
                )
                return head + skipped + f.read(half)
        except FileNotFoundError:
            return b""

    def _wait_for(self, marker: str, offset: int) -> None:
        deadline = time.monotonic() + MARKER_WAIT_S
        needle = marker.encode()
        while time.monotonic() < deadline:
            if needle in self._read_console(offset):
                return
            time.sleep(0.05)

    def _tail(self, lines: int = 15) -> str:
        text = self._read_console(max(0, self._console_size() - 4096)).decode(errors="replace")
        tail = "\n".join(text.splitlines()[-lines:])
        return f"; console tail:\n{tail}" if tail else ""


def split_trial(data: bytes, trial_id: str) -> tuple[bytes, bytes, int]:
    """Cut a console read into (before the begin marker, the trial's excerpt, bytes used).

    The excerpt runs from the begin marker's line through the end marker's line;
    without a begin marker it starts at ``data``'s start, without an end marker it
    runs to the end. "Used" is where the next read starts: just past the end
    marker's line, so that whatever comes after it (a late report) is read again,
    as the boot's, before the next trial.
    """
    start = 0
    begin = data.find(begin_marker(trial_id).encode())
    if begin >= 0:
        start = data.rfind(b"\n", 0, begin) + 1
    used = len(data)
    end = data.find(end_marker(trial_id).encode(), start)
    if end >= 0:
        line_end = data.find(b"\n", end)
        used = len(data) if line_end < 0 else line_end + 1
    return data[:start], data[start:used], used


def _world_readable(path: Path) -> bool:
    """QEMU (user libvirt-qemu) must read the file and traverse every parent."""
    if not os.stat(path).st_mode & 0o004:
        return False
    return all(os.stat(parent).st_mode & 0o001 for parent in path.resolve().parents)


def qemu_readable(path: Path, shared: Path = SHARED_IMAGES) -> Path:
    """``path``, or a copy QEMU can read when it sits under a private folder.

    QEMU runs as libvirt-qemu, so an image under /root or a mode-700 temporary
    checkout fails with "Permission denied". Images are content-addressed
    (kernels are checked by sha256 when registered), so a copy under
    /var/lib/zapfarm/images named by size and mtime is safe to reuse.
    """
    if not path.is_file():
        raise GuestError(f"guest image {path} does not exist")
    if _world_readable(path):
        return path
    st = path.stat()
    copy = shared / f"{st.st_size}-{int(st.st_mtime)}-{path.name}"
    try:
        if not copy.is_file():
            shared.mkdir(parents=True, exist_ok=True)
            shared.chmod(0o755)
            tmp = copy.with_suffix(".tmp")
            shutil.copyfile(path, tmp)
            tmp.chmod(0o644)
            tmp.replace(copy)
    except OSError as exc:
        raise GuestError(
            f"QEMU runs as libvirt-qemu and cannot read {path}, and copying it to {shared} "
            f"failed ({exc}): keep images under world-traversable folders (chmod o+rx)"
        ) from exc
    if not _world_readable(copy):
        raise GuestError(f"{copy} is not readable by libvirt-qemu: chmod o+rx its folders")
    return copy


def reap_orphans(conn: libvirt.virConnect) -> list[str]:
    """Destroy farm guests whose owning process on this host is gone.

    The owner is the ``host:pid`` in the domain's metadata: a restored guest
    keeps its image's name, so the name does not say who owns it.
    """
    host = socket.gethostname()
    reaped = []
    for dom in conn.listAllDomains():
        name = dom.name()
        if not name.startswith(NAME_PREFIX):
            continue
        try:
            xml = dom.XMLDesc()
        except libvirt.libvirtError:
            continue
        pid = owner_pid(xml, host)
        if pid is None or _pid_alive(pid):
            continue
        try:
            persistent = dom.isPersistent()
            if dom.isActive():
                dom.destroy()
            if persistent:
                dom.undefine()
            reaped.append(name)
        except libvirt.libvirtError:
            continue
    return reaped


def evict(conn: libvirt.virConnect, name: str) -> bool:
    """Destroy a left-over domain called ``name`` unless a live process of this host owns it.

    A slot's guest name is fixed by its image, so a guest of a worker process
    that died holding the slot (not AUTODESTROY) would block the next life.
    Returns False when a live process other than this one owns the domain.
    """
    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError:
        return True
    try:
        pid = owner_pid(dom.XMLDesc(), socket.gethostname())
        if pid is not None and pid != os.getpid() and _pid_alive(pid):
            return False
        dom.destroy()
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
            return False
    return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
