"""guest/agent.c over a pseudo-terminal, as the worker talks to it over ttyS1.

The agent runs in host mode (``--tty`` on the slave side of a pty pair) with a
fake trial program, a shell script whose first argument picks a behaviour:
small, large, binary and non-UTF-8 output, exit codes, signals, sleeping past
the deadline and leaving a background child that holds stdout open. A long
exchange checks that every frame's length and CRC hold, ids match, and that
junk, corrupt frames and malformed requests are answered and survived.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import select
import signal
import subprocess
import threading
import time
import tty
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from farm.artifacts.guest_image import GUEST_DIR, compile_static

FAKE_PROGRAM = r"""#!/bin/sh
case "$1" in
  echo) printf '%s' "$2" ;;
  size) head -c "$2" /dev/zero | tr '\0' 'a' ;;
  garbage) printf 'ctl\001\037\177 quote" back\\ ok\303\251 '
           printf 'bad\377\376 surr\355\240\200 cut\342\202' ;;
  args) shift; for a in "$@"; do printf '[%s]' "$a"; done ;;
  exit) exit "$2" ;;
  term) kill -TERM $$ ;;
  sleep) printf 'before'; sleep "$2" ;;
  spin) end=$(( $(date +%s) + $2 ))  # builtins between clock reads: CPU of this process
        while [ "$(date +%s)" -lt "$end" ]; do
          i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done
        done
        printf 'spun' ;;
  orphan) sleep 30 & printf 'parent done' ;;
  linger) rm -f "$3.pid"  # a session of its own (out of the agent's kill), in the trial's userns
          setsid sh -c "echo \$\$ > $3.pid; sleep $2; echo 'BUG: late report' >> $3" \
            </dev/null >/dev/null 2>&1 &
          while [ ! -s "$3.pid" ]; do sleep 0.01; done; printf 'gone' ;;
  vmstat) cat "$2" > "$3"; printf 'counted' ;;
  vmstat-gone) rm -f "$2"; printf 'counted' ;;
  *) printf 'unknown mode %s' "$1"; exit 9 ;;
esac
"""


@dataclass
class Line:
    """The host side of the pty: frames out, validated frames in."""

    master: int
    inbox: queue.Queue[dict[str, Any]] = field(default_factory=queue.Queue)
    heartbeats: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    junk: bytearray = field(default_factory=bytearray)
    bad_frames: list[bytes] = field(default_factory=list)
    frames: int = 0
    blank_lines: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._reader, daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Stop reading, then close the master: a read in flight would keep it open."""
        self.stop.set()
        if self.thread:
            self.thread.join(timeout=5)
        os.close(self.master)

    def _reader(self) -> None:
        buf = bytearray()
        while not self.stop.is_set():
            if not select.select([self.master], [], [], 0.05)[0]:
                continue
            try:
                data = os.read(self.master, 1 << 16)
            except OSError:
                return
            if not data:
                return
            buf += data
            while (nl := buf.find(b"\n")) >= 0:
                line = bytes(buf[:nl])
                del buf[: nl + 1]
                self._frame(line)

    def _frame(self, line: bytes) -> None:
        if not line:
            self.blank_lines += 1  # the agent's beacon after "save"
            return
        start = line.find(b"@ZF ")
        if start != 0:
            self.junk += line
            if start < 0:
                return
            line = line[start:]
        try:
            _, length, crc, payload = line.split(b" ", 3)
            ok = int(length) == len(payload) and int(crc, 16) == zlib.crc32(payload)
            ok = ok and len(crc) == 8 and crc == crc.lower()
        except ValueError:
            ok = False
        if not ok:
            self.bad_frames.append(line)
            return
        self.frames += 1
        message = json.loads(payload)
        if message.get("op") == "heartbeat":  # asynchronous: kept apart from the answers
            self.heartbeats.append((time.monotonic(), message))
        else:
            self.inbox.put(message)

    def send_raw(self, data: bytes) -> None:
        while data:
            data = data[os.write(self.master, data) :]

    def send(self, message: dict[str, Any]) -> None:
        payload = json.dumps(message).encode()
        self.send_frame(payload)

    def send_frame(self, payload: bytes) -> None:
        self.send_raw(b"@ZF %d %08x %s\n" % (len(payload), zlib.crc32(payload), payload))

    def receive(self, timeout: float = 10.0) -> dict[str, Any]:
        return self.inbox.get(timeout=timeout)

    def request(self, message: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        self.send(message)
        answer = self.receive(timeout)
        assert answer.get("id") == message.get("id"), (message, answer)
        return answer


@pytest.fixture(scope="module")
def binaries(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("agent")
    agent = folder / "agent"
    compile_static(GUEST_DIR / "agent.c", agent)
    fake = folder / "fake-trial"
    fake.write_text(FAKE_PROGRAM)
    fake.chmod(0o755)
    return agent, fake


def _agent_line(
    binaries: tuple[Path, Path], tmp_path: Path, *wrap: str, extra: tuple[str, ...] = ()
) -> Iterator[Line]:
    agent, fake = binaries
    master, slave = os.openpty()
    tty.setraw(slave)  # no echo or line editing before the agent sets raw mode itself
    kmsg = tmp_path / "kmsg"
    kmsg.touch()
    proc = subprocess.Popen(
        [
            *wrap,
            str(agent),
            "--tty",
            os.ttyname(slave),
            "--program",
            str(fake),
            "--kmsg",
            str(kmsg),
            *extra,
        ],
        stderr=subprocess.PIPE,
    )
    host = Line(master)
    host.start()
    try:
        yield host
    finally:
        os.close(slave)
        host.close()  # hangs up the pty: the agent exits on EOF
        try:
            proc.wait(timeout=5)
        finally:
            proc.kill()
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else b""
    assert not host.bad_frames
    assert not host.junk


@pytest.fixture
def line(binaries: tuple[Path, Path], tmp_path: Path) -> Iterator[Line]:
    yield from _agent_line(binaries, tmp_path)


def run(line: Line, rid: str, *argv: str, deadline_ms: int = 5000) -> dict[str, Any]:
    answer = line.request({"op": "run", "id": rid, "argv": list(argv), "deadline_ms": deadline_ms})
    assert answer["op"] == "result", answer
    return answer


def test_ready_then_ping(line: Line) -> None:
    ready = line.receive()
    assert ready["op"] == "ready"
    assert ready["agent"] == 1
    assert ready["kernel"] == os.uname().release
    assert ready["numa_nodes"] >= 1
    assert ready["cpus"] == os.cpu_count()
    assert ready["mem_kb"] > 0
    assert line.request({"op": "ping", "id": "p-1"}) == {"op": "pong", "id": "p-1"}


def test_long_exchange(line: Line, tmp_path: Path) -> None:
    """200 runs of every output shape on one line, a ping after every tenth."""
    line.receive()  # ready
    seen = {"big": 0, "garbage": 0, "timeout": 0}
    for i in range(200):
        rid = f"t-{i}"
        kind = i % 10
        if kind == 3:
            answer = run(line, rid, "size", "3000")
            assert answer["output"] == "a" * 3000
            assert answer["output_truncated"] is False
        elif kind == 5 and i < 60:  # 1 MB: truncated at 64 KiB, the rest drained to EOF
            answer = run(line, rid, "size", str(1 << 20))
            assert answer["output"] == "a" * (64 * 1024)
            assert answer["output_truncated"] is True
            seen["big"] += 1
        elif kind == 7:
            answer = run(line, rid, "garbage")
            assert answer["output"] == (
                'ctl\x01\x1f\x7f quote" back\\ ok\u00e9 bad\ufffd\ufffd surr\ufffd\ufffd\ufffd'
                " cut\ufffd\ufffd"
            )
            seen["garbage"] += 1
        elif kind == 9 and i % 50 == 49:  # sleeps past its deadline
            answer = run(line, rid, "sleep", "10", deadline_ms=150)
            assert (answer["status"], answer["signal"], answer["output"]) == (
                "timeout",
                9,
                "before",
            )
            seen["timeout"] += 1
        else:
            answer = run(line, rid, "echo", f"hello {i} \u2603")
            assert answer["output"] == f"hello {i} \u2603"
        if answer["status"] != "timeout":
            assert (answer["status"], answer["exit_code"], answer["signal"]) == ("exited", 0, 0)
        assert answer["elapsed_ms"] >= 0
        if kind == 9:
            assert line.request({"op": "ping", "id": f"p-{i}"}) == {"op": "pong", "id": f"p-{i}"}
    assert seen == {"big": 6, "garbage": 20, "timeout": 4}
    assert line.frames == 1 + 200 + 20  # ready, results, pongs: every one checked out
    markers = (tmp_path / "kmsg").read_text().splitlines()
    expected = [f"<5>zapfarm: trial t-{i} {w}" for i in range(200) for w in ("begin", "end")]
    assert [m for m in markers if "zapfarm: trial" in m] == expected


def test_exit_codes_signals_and_argv(line: Line) -> None:
    line.receive()
    answer = run(line, "e", "exit", "3")
    assert (answer["status"], answer["exit_code"], answer["signal"]) == ("exited", 3, 0)
    answer = run(line, "s", "term")
    assert (answer["status"], answer["exit_code"], answer["signal"]) == ("signaled", None, 15)
    tricky = ["with space", 'quo"te', "back\\slash", "tab\there", "\u00e9\u2603\U0001f600", ""]
    answer = run(line, "a", "args", *tricky)
    assert answer["output"] == "".join(f"[{a}]" for a in tricky)


def test_deadline_kills_the_process_group(line: Line) -> None:
    line.receive()
    started = time.monotonic()
    answer = run(line, "slow", "sleep", "30", deadline_ms=300)
    assert time.monotonic() - started < 5
    assert answer["status"] == "timeout"
    assert answer["signal"] == 9
    assert answer["exit_code"] is None
    assert answer["output"] == "before"
    assert 300 <= answer["elapsed_ms"] < 5000
    # A child that exits but leaves a background process holding stdout.
    started = time.monotonic()
    answer = run(line, "orphan", "orphan", deadline_ms=20000)
    assert time.monotonic() - started < 3
    assert (answer["status"], answer["output"]) == ("exited", "parent done")
    assert line.request({"op": "ping", "id": "after"})["op"] == "pong"


def test_heartbeats_while_a_trial_runs_carry_its_cpu_time(line: Line) -> None:
    """A trial that burns CPU shows rising cpu_ms; one asleep shows none: slow vs stopped."""
    line.receive()
    answer = run(line, "spin", "spin", "5", deadline_ms=20000)
    assert (answer["status"], answer["output"]) == ("exited", "spun")
    beats = [m for _, m in line.heartbeats if m["id"] == "spin"]
    times = [t for t, m in line.heartbeats if m["id"] == "spin"]
    assert 2 <= len(beats) <= 4, beats  # every 2 s of a ~5 s trial
    assert all(b - a > 1.5 for a, b in itertools.pairwise(times)), times
    assert [m["elapsed_ms"] for m in beats] == sorted(m["elapsed_ms"] for m in beats)
    cpu = [m["cpu_ms"] for m in beats]
    assert all(b - a >= 200 for a, b in itertools.pairwise(cpu)), cpu  # busy: rising
    line.heartbeats.clear()
    answer = run(line, "nap", "sleep", "5", deadline_ms=20000)
    assert answer["status"] == "exited"
    naps = [m["cpu_ms"] for _, m in line.heartbeats if m["id"] == "nap"]
    assert len(naps) >= 2 and naps[-1] - naps[0] <= 20, naps  # asleep: no progress
    assert not [m for _, m in line.heartbeats if m["id"] != "nap"]


def test_missing_program_is_an_error_status(binaries: tuple[Path, Path], tmp_path: Path) -> None:
    agent, _ = binaries
    master, slave = os.openpty()
    tty.setraw(slave)
    proc = subprocess.Popen(
        [str(agent), "--tty", os.ttyname(slave), "--program", str(tmp_path / "nope"), "--no-kmsg"],
        stderr=subprocess.DEVNULL,
    )
    host = Line(master)
    host.start()
    try:
        host.receive()
        answer = run(host, "x", "echo", "hi")
        assert answer["status"] == "error"
        assert "No such file" in answer["error"]
    finally:
        os.close(slave)
        host.close()
        proc.wait(timeout=5)


def test_junk_corrupt_frames_and_malformed_requests(line: Line) -> None:
    line.receive()

    def error_for(payload: bytes | None = None, raw: bytes | None = None) -> dict[str, Any]:
        if raw is not None:
            line.send_raw(raw)
        else:
            assert payload is not None
            line.send_frame(payload)
        answer = line.receive()
        assert answer["op"] == "error", answer
        return answer

    # Junk between frames is skipped silently; "@ZF " prefixes that fail are answered.
    line.send_raw(b"login: \x00\xff garbage without a magic\r\n@Z")
    assert line.request({"op": "ping", "id": "j1"})["op"] == "pong"
    good = json.dumps({"op": "ping", "id": "c"}).encode()
    bad_crc = b"@ZF %d %08x %s\n" % (len(good), zlib.crc32(good) ^ 1, good)
    assert error_for(raw=bad_crc) == {"op": "error", "id": None, "error": "frame crc mismatch"}
    short = b"@ZF %d %08x %s\n" % (len(good) + 3, zlib.crc32(good), good)
    assert error_for(raw=short)["error"] == "frame length mismatch"
    assert error_for(raw=b"@ZF x 1 {}\n")["error"] == "malformed frame header"
    # A frame whose newline was lost runs into the next one: the next one still counts.
    line.send_raw(b'@ZF 999 00000000 {"op"')
    line.send({"op": "ping", "id": "resync"})
    assert line.receive()["error"] == "frame length mismatch"
    assert line.receive() == {"op": "pong", "id": "resync"}

    cases: list[tuple[bytes, str | None, str]] = [
        (b"{not json", None, "malformed JSON"),
        (b"[1, 2]", None, "malformed JSON"),
        (b'{"op": "ping"}', None, "missing id"),
        (b'{"id": "m1"}', "m1", "missing op"),
        (b'{"op": "fly", "id": "m2"}', "m2", "unknown op"),
        (b'{"op": "ping", "id": 7}', None, "id must be a string"),
        (b'{"op": "ping", "id": "has space"}', None, "id must be 1-128 printable ASCII"),
        (json.dumps({"op": "ping", "id": "x" * 129}).encode(), None, "id must be 1-128"),
        (b'{"op": "run", "id": "m3", "deadline_ms": 10}', "m3", "run needs argv"),
        (b'{"op": "run", "id": "m4", "argv": []}', "m4", "run needs deadline_ms"),
        (b'{"op": "run", "id": "m5", "argv": ["a", 1], "deadline_ms": 10}', "m5", "argv must be"),
        (b'{"op": "run", "id": "m6", "argv": "a", "deadline_ms": 10}', "m6", "argv must be"),
        (b'{"op": "run", "id": "m7", "argv": [], "deadline_ms": 1.5}', "m7", "must be an integer"),
        (b'{"op": "run", "id": "m8", "argv": [], "deadline_ms": 0}', "m8", "deadline_ms must be"),
        (b'{"op": "run", "id": "m9", "argv": ["a\\u0000b"], "deadline_ms": 9}', "m9", "NUL"),
        (b'{"op": "ping", "id": "m10", "id": "m11"}', "m10", "duplicate key"),
        (b'{"op": "ping", "id": "m12"} trailing', "m12", "trailing data"),
        (b'{"op": "ping", "id": "m13", "x": "\\ud800"}', "m13", "lone surrogate"),
    ]
    for payload, rid, complaint in cases:
        answer = error_for(payload)
        assert answer["id"] == rid, (payload, answer)
        assert complaint in answer["error"], (payload, answer)

    # Unknown keys of any shape are ignored; the loop is alive after all of that.
    extra = {"op": "ping", "id": "ok", "meta": {"a": [1, {"b": None}], "c": True}, "n": -1.5e3}
    assert line.request(extra) == {"op": "pong", "id": "ok"}


def test_pipelined_requests_are_answered_in_order(line: Line) -> None:
    line.receive()
    requests = []
    for i in range(30):
        request: dict[str, Any] = {"op": "ping", "id": f"q{i}"}
        if i % 3 == 0:
            request |= {"op": "run", "argv": ["echo", str(i)], "deadline_ms": 5000}
        requests.append(request)
    blob = b"".join(
        b"@ZF %d %08x %s\n" % (len(p), zlib.crc32(p), p)
        for p in (json.dumps(r).encode() for r in requests)
    )
    line.send_raw(blob)
    for i, request in enumerate(requests):
        answer = line.receive()
        assert answer["id"] == request["id"]
        if request["op"] == "run":
            assert answer["output"] == str(i)


# --- the mm signal: the end marker follows the trial mm's teardown ------------------


def _userns_limit() -> int:
    return int(Path("/proc/sys/user/max_user_namespaces").read_text())


@pytest.fixture(params=[20000])
def userns_line(
    request: pytest.FixtureRequest, binaries: tuple[Path, Path], tmp_path: Path
) -> Iterator[Line]:
    """The agent in a user namespace of the test's own, where it may set the limit as PID 1
    does; ``request.param`` is how long it waits for a trial's mm (--mm-wait-ms)."""
    if subprocess.run(["unshare", "-Ur", "true"], capture_output=True).returncode != 0:
        pytest.fail(
            "this host cannot create user namespaces (unshare -Ur): the mm signal needs them"
        )
    before = _userns_limit()
    extra = ("--userns-probe", "--mm-wait-ms", str(request.param))
    yield from _agent_line(binaries, tmp_path, "unshare", "-Ur", extra=extra)
    assert _userns_limit() == before  # the host's own limit is never touched


def _kmsg_lines(tmp_path: Path) -> list[str]:
    return [ln.removeprefix("<5>") for ln in (tmp_path / "kmsg").read_text().splitlines()]


def test_a_report_printed_after_the_trial_exits_lands_before_the_end_marker(
    userns_line: Line, tmp_path: Path
) -> None:
    """A process of the trial's namespace outlives it, as khugepaged holds a dead mm;
    it prints a report 0.6 s after the trial program exited, and that still comes first."""
    assert userns_line.receive()["mm_signal"] == "userns"
    answer = run(userns_line, "t-late", "linger", "0.6", str(tmp_path / "kmsg"))
    assert (answer["status"], answer["output"]) == ("exited", "gone")
    assert answer["mm_released"] is True and answer["mm_wait_ms"] >= 500
    assert _kmsg_lines(tmp_path)[-3:] == [
        "zapfarm: trial t-late begin",
        "BUG: late report",
        "zapfarm: trial t-late end",
    ]
    quick = run(userns_line, "t-quick", "exit", "0")
    assert quick["mm_released"] is True and quick["mm_wait_ms"] < 1500


@pytest.mark.parametrize("userns_line", [500], indirect=True)
def test_an_mm_held_past_the_bound_is_reported_and_stops_the_next_trial(
    userns_line: Line, tmp_path: Path
) -> None:
    userns_line.receive()  # ready
    kmsg = tmp_path / "kmsg"
    answer = run(userns_line, "t-held", "linger", "600", str(kmsg))
    assert answer["mm_released"] is False and answer["mm_wait_ms"] == 500
    assert _kmsg_lines(tmp_path)[-1] == "zapfarm: trial t-held end"
    # while the trial's namespace lives, no trial starts: its reports would land there
    refused = userns_line.request({"op": "run", "id": "t-2", "argv": [], "deadline_ms": 5000})
    assert refused == {
        "op": "error",
        "id": "t-2",
        "error": "the previous trial's mm is still held: reboot the guest",
    }
    os.killpg(int(Path(f"{kmsg}.pid").read_text()), signal.SIGKILL)
    after = run(userns_line, "t-3", "exit", "3")
    assert (after["status"], after["exit_code"], after["mm_released"]) == ("exited", 3, True)


def test_the_probe_is_refused_in_the_initial_user_namespace(
    binaries: tuple[Path, Path], tmp_path: Path
) -> None:
    before = _userns_limit()
    lines = _agent_line(binaries, tmp_path, extra=("--userns-probe",))
    host = next(lines)
    try:
        assert host.receive()["mm_signal"] == "cpus"
        assert run(host, "t-1", "exit", "0")["mm_released"] is None
    finally:
        with contextlib.suppress(StopIteration):
            next(lines)
    assert _userns_limit() == before


def test_a_trial_that_needs_root_outside_runs_without_the_mm_signal(userns_line: Line) -> None:
    """The NUMA-balancing mover writes a sysctl that checks CAP_SYS_ADMIN in the initial
    user namespace: its trial keeps the agent's namespace, and says it could not tell."""
    assert userns_line.receive()["mm_signal"] == "userns"
    answer = run(userns_line, "t-nb", "args", "--mover", "numa-balancing")
    assert answer["output"] == "[--mover][numa-balancing]"
    assert answer["mm_released"] is None
    assert run(userns_line, "t-mp", "args", "--mover", "move_pages")["mm_released"] is True


# --- the window counters (--instrument count kernels, docs/kernels.md) --------------

WINDOW_ITEMS = (
    "zapfarm_migration_entries",
    "zapfarm_migration_skipped",
    "zapfarm_swap_entries",
    "zapfarm_swap_skipped",
)


@pytest.fixture
def vmstat_line(binaries: tuple[Path, Path], tmp_path: Path) -> Iterator[tuple[Line, Path]]:
    """An agent whose /proc/vmstat is a file the test (and the fake program) rewrites."""
    vmstat = tmp_path / "vmstat"
    for host in _agent_line(binaries, tmp_path, extra=("--vmstat", str(vmstat))):
        yield host, vmstat


def host_vmstat() -> str:
    """This host's real /proc/vmstat: a kernel without the count patch."""
    text = Path("/proc/vmstat").read_text()
    assert "pgfault " in text and "zapfarm_" not in text
    return text


def with_window(values: tuple[int, ...], base: str | None = None) -> str:
    """Real vmstat text with the four zapfarm_* lines where the patch puts them (the end)."""
    lines = "".join(f"{name} {v}\n" for name, v in zip(WINDOW_ITEMS, values, strict=True))
    return (host_vmstat() if base is None else base) + lines


def trial_window(line: Line, vmstat: Path, before: str | None, after: str | None) -> Any:
    """Run one trial whose program turns vmstat from before into after; the reply's window."""
    after_file = vmstat.with_name("after")
    if before is None:
        vmstat.unlink(missing_ok=True)
    else:
        vmstat.write_text(before)
    if after is None:  # the file disappears during the trial
        answer = run(line, "w", "vmstat-gone", str(vmstat))
        assert answer["output"] == "counted"
        return answer["window"]
    after_file.write_text(after)
    answer = run(line, f"w{len(after)}", "vmstat", str(after_file), str(vmstat))
    assert answer["output"] == "counted"
    return answer["window"]


def test_window_is_the_counter_difference(vmstat_line: tuple[Line, Path]) -> None:
    line, vmstat = vmstat_line
    line.receive()
    before = (1000, 3, 20, 0)
    after = (1042, 10, 25, 5)
    window = trial_window(line, vmstat, with_window(before), with_window(after))
    assert window == {"entries": 42, "skipped": 7, "swap_entries": 5, "swap_skipped": 5}
    # unchanged counters: a trial that never met the window, not a missing one
    same = with_window(after)
    assert trial_window(line, vmstat, same, same) == dict.fromkeys(window, 0)
    # values near 2**63 and lines in another order still parse
    big = (1 << 62) + 5
    shuffled = "".join(reversed(with_window((big, big, big, big), "").splitlines(True)))
    bumped = with_window((big + 9, big + 1, big, big), host_vmstat())
    assert trial_window(line, vmstat, host_vmstat() + shuffled, bumped) == {
        "entries": 9,
        "skipped": 1,
        "swap_entries": 0,
        "swap_skipped": 0,
    }


def test_window_is_null_without_valid_counters(vmstat_line: tuple[Line, Path]) -> None:
    """An uninstrumented kernel, or vmstat text that is not what the patch prints: null."""
    line, vmstat = vmstat_line
    line.receive()
    good = with_window((5, 1, 5, 1))
    real = host_vmstat()
    bad_afters = {
        "uninstrumented kernel": real,
        "one item missing": real + "".join(f"{n} 9\n" for n in WINDOW_ITEMS[:3]),
        "an item twice": good + "zapfarm_swap_entries 6\n",
        "not a number": good.replace("zapfarm_migration_entries 5", "zapfarm_migration_entries x"),
        "trailing junk": good.replace("zapfarm_swap_skipped 1", "zapfarm_swap_skipped 1 2"),
        "negative": good.replace("zapfarm_swap_entries 5", "zapfarm_swap_entries -5"),
        "20 digits": good.replace("zapfarm_swap_entries 5", "zapfarm_swap_entries " + "9" * 20),
        "went backwards": with_window((4, 1, 5, 1)),
        "over 256 KiB": good + "x" * (256 * 1024),
    }
    for why, after in bad_afters.items():
        assert trial_window(line, vmstat, good, after) is None, why
    assert trial_window(line, vmstat, None, good) is None, "no vmstat before the trial"
    assert trial_window(line, vmstat, good, None) is None, "no vmstat after the trial"
    # a name that only starts like an item is another item, not a duplicate
    lookalike = good + "zapfarm_migration_entries_total 77\n"
    moved = lookalike.replace("zapfarm_migration_entries 5\n", "zapfarm_migration_entries 8\n")
    window = trial_window(line, vmstat, lookalike, moved)
    assert window == {"entries": 3, "skipped": 0, "swap_entries": 0, "swap_skipped": 0}
    assert line.request({"op": "ping", "id": "alive"})["op"] == "pong"


def test_resume_starts_a_new_life(line: Line, tmp_path: Path) -> None:
    """After a restore the host sends "resume": the agent marks it on the console and answers
    with what "ready" carried; trials and their markers work as before."""
    ready = line.receive()
    answer = line.request({"op": "resume", "id": "life-2", "time_ms": 1_800_000_000_000})
    assert answer == {**ready, "op": "resumed", "id": "life-2"}
    assert run(line, "t-after", "echo", "still here")["output"] == "still here"
    marks = (tmp_path / "kmsg").read_text().splitlines()
    assert [m for m in marks if "resume" in m or "trial" in m] == [
        "<5>zapfarm: resume life-2",
        "<5>zapfarm: trial t-after begin",
        "<5>zapfarm: trial t-after end",
    ]
    # a second resume (the next restore of the same image) is just another life
    assert line.request({"op": "resume", "id": "life-3"})["op"] == "resumed"
    refused = line.request({"op": "resume", "id": "life-4", "time_ms": "soon"})
    assert refused["op"] == "error" and "time_ms must be an integer" in refused["error"]


def test_save_starts_a_beacon_that_the_next_request_stops(line: Line) -> None:
    """Between "save" and the next request the agent writes a newline every 20 ms (a restored
    guest's pty is then noticed by QEMU at once); frames still parse around them."""
    line.receive()
    assert line.request({"op": "save", "id": "s-1"}) == {"op": "saving", "id": "s-1"}
    time.sleep(0.5)
    beacons = line.blank_lines
    assert beacons >= 5, beacons
    resumed = line.request({"op": "resume", "id": "life-2"})
    assert resumed["op"] == "resumed"
    time.sleep(0.3)
    settled = line.blank_lines
    time.sleep(0.3)
    assert line.blank_lines == settled  # quiet again
    assert line.request({"op": "ping", "id": "p-9"}) == {"op": "pong", "id": "p-9"}
