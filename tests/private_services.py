"""Servers and networks a test owns: it may stop, restart or partition them at will.

The fault and multi-host tests never touch the shared Redis and PostgreSQL: they
start a private ``redis-server`` (append-only file, as a production broker must
have) and a private PostgreSQL cluster (initdb + pg_ctl as the postgres user,
~1 s), optionally inside a network namespace. Namespaces get 10.x addresses only
and are linked to each other by a bridge that lives inside the first one, so
nothing is added to the host's own network. Everything started here is stopped
by its ``close()``/``delete()``, also when the test failed.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from farm.store.models import Campaign, Finding, Trial

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], object], timeout: float, step: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


# --- network namespaces -------------------------------------------------------


def netns_unavailable() -> str | None:
    """Why this machine cannot host the multi-host test, or None when it can."""
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    name = f"zfprobe{secrets.token_hex(3)}"
    add = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if add.returncode != 0:
        return f"`ip netns add` is not permitted here: {add.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


@dataclass
class Netns:
    """A network namespace: one "host" of the multi-host test."""

    name: str
    hostname: str

    def prefix(self) -> list[str]:
        """Run a command on this host: its network namespace and its own hostname."""
        return [
            "ip",
            "netns",
            "exec",
            self.name,
            "unshare",
            "--uts",
            "sh",
            "-c",
            'hostname "$0" && exec "$@"',
            self.hostname,
        ]

    def ip(self, *args: str) -> None:
        subprocess.run(["ip", "-n", self.name, *args], check=True, capture_output=True)

    def pids(self) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]


@dataclass
class Lan:
    """Namespaces on one 10.x subnet; the bridge lives in the first one (the "db" host)."""

    names: Sequence[str]
    subnet: str = "10.77.0"
    hosts: dict[str, Netns] = field(default_factory=dict)

    def address(self, name: str) -> str:
        return f"{self.subnet}.{list(self.names).index(name) + 1}"

    def create(self) -> Lan:
        tag = secrets.token_hex(3)
        try:
            for name in self.names:
                ns = Netns(f"zf{tag}-{name}", f"{name}-host")
                subprocess.run(["ip", "netns", "add", ns.name], check=True, capture_output=True)
                self.hosts[name] = ns
                ns.ip("link", "set", "lo", "up")
            hub = self.hosts[self.names[0]]
            hub.ip("link", "add", "br0", "type", "bridge")
            hub.ip("addr", "add", f"{self.address(self.names[0])}/24", "dev", "br0")
            hub.ip("link", "set", "br0", "up")
            for name in self.names[1:]:
                ns = self.hosts[name]
                port = f"p-{name}"[:15]
                hub.ip(
                    "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns.name
                )
                hub.ip("link", "set", port, "master", "br0", "up")
                ns.ip("addr", "add", f"{self.address(name)}/24", "dev", "eth0")
                ns.ip("link", "set", "eth0", "up")
        except BaseException:
            self.delete()
            raise
        return self

    def delete(self) -> None:
        """Kill whatever still runs in the namespaces, then remove them (veths go with them)."""
        for ns in self.hosts.values():
            for pid in ns.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for ns in self.hosts.values():
            subprocess.run(["ip", "netns", "del", ns.name], capture_output=True)
        self.hosts.clear()


# --- Redis ---------------------------------------------------------------------


@dataclass
class RedisServer:
    """A private redis-server with an fsync'd append-only file, as a farm broker runs."""

    folder: Path
    port: int = field(default_factory=free_port)
    bind: str = "127.0.0.1"
    prefix: Sequence[str] = ()
    proc: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> Path:
        return self.folder / "redis.sock"

    def url(self, db: int) -> str:
        return f"redis://{self.bind}:{self.port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        """A client over the unix socket: works from outside the server's namespace too."""
        return redis.Redis(unix_socket_path=str(self.socket_path), db=db, socket_timeout=5)

    def start(self) -> RedisServer:
        self.folder.mkdir(parents=True, exist_ok=True)
        argv = [
            *self.prefix,
            shutil.which("redis-server") or "redis-server",
            "--bind", self.bind,
            "--port", str(self.port),
            "--dir", str(self.folder),
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--protected-mode", "no",
            "--logfile", str(self.folder / "redis.log"),
        ]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait_for(self.answers, 15, 0.05):
            self.stop(signal.SIGKILL)
            raise RuntimeError(f"private redis-server did not start on port {self.port}")
        return self

    def answers(self) -> bool:
        try:
            return bool(self.client().ping())
        except (redis.RedisError, OSError):
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM: Redis' own shutdown (AOF flushed); SIGKILL: a crash."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None


# --- PostgreSQL ----------------------------------------------------------------


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/" + name))
    if not versions:
        raise FileNotFoundError(f"{name} not found: `apt-get install postgresql`")
    return str(versions[-1])


def postgres_unavailable() -> str | None:
    try:
        _pg_bin("initdb")
        _pg_bin("pg_ctl")
    except FileNotFoundError as exc:
        return str(exc)
    if shutil.which("runuser") is None:
        return "runuser (util-linux) is needed to run initdb as the postgres user"
    try:
        subprocess.run(["id", "postgres"], check=True, capture_output=True)
    except subprocess.CalledProcessError:
        return "there is no postgres user to own a private cluster"
    return None


@dataclass
class PostgresServer:
    """A private PostgreSQL cluster owned by the postgres user, trust auth, no fsync."""

    port: int = field(default_factory=free_port)
    listen: str = "127.0.0.1"
    prefix: Sequence[str] = ()
    folder: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="zfpg-")))

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def _as_postgres(self, *argv: str, outside: bool = False) -> None:
        prefix = [] if outside else list(self.prefix)
        subprocess.run(
            [*prefix, "runuser", "-u", "postgres", "--", *argv],
            check=True,
            capture_output=True,
            cwd="/",
        )

    def init(self) -> PostgresServer:
        shutil.chown(self.folder, "postgres")
        self._as_postgres(
            _pg_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
            "--no-sync", "-E", "UTF8", outside=True,
        )  # fmt: skip
        with (self.data / "pg_hba.conf").open("a") as hba:
            hba.write("host all all 10.0.0.0/8 trust\n")
        return self

    def start(self) -> PostgresServer:
        options = (
            f"-c listen_addresses={self.listen} -p {self.port} -k {self.folder} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._as_postgres(
            _pg_bin("pg_ctl"), "-D", str(self.data), "-o", options,
            "-l", str(self.folder / "server.log"), "-w", "-t", "30", "start",
        )  # fmt: skip
        return self

    def stop(self, mode: str = "fast") -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._as_postgres(
                _pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop", outside=True
            )

    def url(self, database: str = "postgres", *, tcp: bool = False) -> str:
        """TCP (from the server's network) or the unix socket (from anywhere on this machine)."""
        if tcp:
            return f"postgresql+psycopg://postgres@{self.listen}:{self.port}/{database}"
        return f"postgresql+psycopg://postgres@/{database}?host={self.folder}&port={self.port}"

    def create_database(self, name: str) -> None:
        engine = create_engine(self.url(), isolation_level="AUTOCOMMIT", poolclass=NullPool)
        try:
            with engine.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            engine.dispose()

    def close(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)


# --- control plane processes ----------------------------------------------------


def start_scheduler(
    env: dict[str, str],
    log: Path,
    *,
    batch_size: int = 2,
    reconcile_grace_s: float = 5,
    prefix: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """``farm scheduler`` as a process of its own, as systemd runs it.

    ``reconcile_grace_s`` is short here (60 s in production) so that a batch whose
    message a broker crash lost is sent again within the test's patience.
    """
    base = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    argv = ["scheduler", "--batch-size", f"{batch_size}"]
    argv += ["--reconcile-grace", f"{reconcile_grace_s}"]
    with log.open("ab") as out:
        return subprocess.Popen(
            [*prefix, sys.executable, "-m", "farm.cli.main", *argv],
            env={**base, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 20) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


# --- what a fault did to the farm ----------------------------------------------


def runs_per_trial(logs: Iterable[Path]) -> Counter[str]:
    """How often workers started each trial, from their logs ("running trial <id>")."""
    runs: Counter[str] = Counter()
    for log in logs:
        with contextlib.suppress(FileNotFoundError):
            runs += Counter(re.findall(r"running trial (\S+)", log.read_text(errors="replace")))
    return runs


@dataclass
class Tally:
    """The numbers a fault test asserts and prints (the lead quotes them)."""

    label: str
    in_flight: int  # trials queued or running when the fault hit
    expected: int  # trials the campaigns were to create
    recorded: int  # trials recorded (status done)
    duplicates: int  # trials recorded more than once, or counted twice in a finding
    lost: int  # expected trials never recorded
    reruns: int = 0  # extra executions (a redelivered trial runs again; recorded once)

    def show(self) -> str:
        line = (
            f"[{self.label}] in_flight={self.in_flight} recorded={self.recorded}/{self.expected} "
            f"duplicates={self.duplicates} lost={self.lost} reruns={self.reruns}"
        )
        print(line)
        return line


def in_flight(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return int(
            session.scalar(select(func.count()).select_from(Trial).where(Trial.status != "done"))
            or 0
        )


def tally(
    label: str,
    sessions: sessionmaker[Session],
    campaign_names: Iterable[str],
    *,
    in_flight_at_fault: int,
    worker_logs: Iterable[Path] = (),
) -> Tally:
    """Expected trial ids come from each campaign's budget: ``<campaign>-<n:06d>``."""
    expected: set[str] = set()
    with sessions() as session:
        for name in campaign_names:
            campaign = session.scalars(select(Campaign).where(Campaign.name == name)).one()
            budget = int(campaign.spec["budget"]["trials"])
            expected |= {f"{name}-{n:06d}" for n in range(budget)}
        rows = session.execute(select(Trial.trial_id, Trial.status, Trial.finding_id)).all()
        done = Counter(r.trial_id for r in rows if r.status == "done")
        attached = Counter(r.finding_id for r in rows if r.finding_id is not None)
        over_counted = sum(
            max(0, f.trial_count - attached[f.id]) for f in session.scalars(select(Finding)).all()
        )
    runs = runs_per_trial(worker_logs)
    return Tally(
        label=label,
        in_flight=in_flight_at_fault,
        expected=len(expected),
        recorded=len(set(done) & expected),
        duplicates=sum(n - 1 for n in done.values()) + over_counted,
        lost=len(expected - set(done)),
        reruns=sum(runs[t] - 1 for t in expected if runs[t] > 1),
    )
