"""A hostile guest: megabytes on the console, oversized, invalid and booby-trapped output.

The real agent (guest/agent.c in host mode, on a pty as on ttyS1) runs a fake trial
program that misbehaves on purpose; the worker's real code drives it
(workers.vm.Guest.run, workers.trial.execute, workers.channel.FrameDecoder), the
real recorder stores the results in PostgreSQL (which refuses NUL characters) and
the web page of each trial is rendered. Everything must come out bounded, rejected
with a reason, or escaped, and every trial recorded exactly once with a clear
verdict and error.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
import tty
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from private_services import Tally
from sqlalchemy import select as sql_select

from farm.artifacts.guest_image import GUEST_DIR, compile_static
from farm.artifacts.kernels import sha256_of, write_manifest
from farm.protocol import MAX_CONSOLE_BYTES, MAX_OUTPUT_BYTES, TrialResult
from farm.store.db import make_engine, session_factory, upgrade
from farm.store.models import Trial
from farm.store.recorder import record_many
from farm.triage.verdict import judge
from farm.web import create_app
from workers.channel import MAX_FRAME, ChannelError, FrameDecoder, encode
from workers.synthetic import synthetic_result
from workers.trial import execute
from workers.vm import MAX_CONSOLE_READ, Guest, GuestConfig

pytestmark = [pytest.mark.faults, pytest.mark.postgres]

TOKEN = "zf1-00000000000000cc~pages=128"
XSS = "<script>alert(1)</script>"
ANSI = "\x1b[2J\x1b[31m"
FLOOD_BYTES = 6_000_000

FAKE_PROGRAM = r"""#!/bin/sh
case "$(cat @MODE@)" in
  flood)  # a kernel flooding the console (kmsg) mid-trial, then a valid answer
    line=$(printf '[ 1.0] <script>alert(1)</script> \033[2J\033[31mred\033[0m')
    line="$line <img src=x onerror=alert(2)> $(printf '\001\177')"
    yes "$line" | head -c @FLOOD@ >> @CONSOLE@
    cat @VALID@ ;;
  big) yes '<script>alert(1)</script>' | head -c 5000000 ;;
  truncated) printf '{"program": "zapmigrate", "format": 1, "inputs": {' ;;
  html) printf '<html><body><h1>It works!</h1></body></html>' ;;
  schema) printf '{"program": "<b>evil</b>", "format": 1, "surprise": "\\u001b[2J"}' ;;
  binary) printf 'a\000b\377\376 {"x": "\355\240\200"} \033[31m' ;;
  xss) cat @XSS_JSON@ ;;
esac
"""


class PtyChannel:
    """workers.channel.Channel over a pty: the agent in host mode instead of ttyS1."""

    def __init__(self, master: int) -> None:
        self.master = master
        self.decoder = FrameDecoder()
        self.inbox: deque[dict[str, Any]] = deque()

    @property
    def bad_frames(self) -> int:
        return self.decoder.bad_frames

    def send(self, message: dict[str, Any]) -> None:
        data = encode(message)
        while data:
            data = data[os.write(self.master, data) :]

    def receive(self, timeout: float, want: str | None = None) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while True:
            while self.inbox:
                message = self.inbox.popleft()
                if want is None or message.get("op") == want:
                    return message
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if not select.select([self.master], [], [], left)[0]:
                continue
            try:
                data = os.read(self.master, 1 << 16)
            except OSError as exc:
                raise ChannelError(f"pty: {exc}") from exc
            if not data:
                raise ChannelError("the agent hung up")
            self.inbox.extend(self.decoder.feed(data))

    def close(self) -> None:
        pass


class PtyGuest(Guest):
    """A guest without a hypervisor: the agent runs on this host, behind a pty."""

    def apply_vm_knobs(self, cpu_quota_pct: int, vcpu_pin: str, period_us: int = 100_000) -> None:
        pass

    def _connected(self) -> bool:
        return True  # no libvirt connection to lose

    def state(self) -> str:
        return "running"  # the agent's process stands in for the domain


@dataclass
class OnePool:
    """A GuestPool with one booted guest (execute() needs acquire/release/retire)."""

    guest: Guest

    def acquire(self, kernel_name: str, kernel: Path) -> tuple[Guest, bool]:
        return self.guest, False

    def release(self, kernel_name: str, *, tainted: bool) -> None:
        pass

    def retire(self, kernel_name: str) -> None:
        pass


@pytest.fixture
def hostile_guest(tmp_path: Path) -> Iterator[tuple[Guest, Path]]:
    """A 'guest' whose agent runs the hostile program; returns it and the mode file."""
    agent = tmp_path / "agent"
    compile_static(GUEST_DIR / "agent.c", agent)
    consoles = tmp_path / "consoles"
    consoles.mkdir()
    guest = PtyGuest(
        conn=None,  # type: ignore[arg-type]  # no hypervisor: the channel is a pty
        config=GuestConfig("hostile", Path("/dev/null"), Path("/dev/null"), consoles),
    )
    guest.console_log.touch()  # the agent's kmsg: markers, and the flood, land here
    valid = synthetic_result({"trial_id": "v", "token": TOKEN, "kernel": {}}, "w").program
    assert valid is not None
    (tmp_path / "valid.json").write_text(valid.model_dump_json())
    booby = valid.model_copy(update={"kernel": XSS + ANSI + "\u202e"})
    (tmp_path / "xss.json").write_text(booby.model_dump_json())
    mode = tmp_path / "mode"
    program = tmp_path / "hostile"
    text = FAKE_PROGRAM
    for key, value in {
        "@MODE@": mode,
        "@CONSOLE@": guest.console_log,
        "@VALID@": tmp_path / "valid.json",
        "@XSS_JSON@": tmp_path / "xss.json",
        "@FLOOD@": FLOOD_BYTES,
    }.items():
        text = text.replace(key, str(value))
    program.write_text(text)
    program.chmod(0o755)
    master, slave = os.openpty()
    tty.setraw(slave)
    proc = subprocess.Popen(
        [agent, "--tty", os.ttyname(slave), "--program", program, "--kmsg", guest.console_log],
        stderr=subprocess.DEVNULL,
    )
    try:
        channel = PtyChannel(master)
        guest.channel = channel  # type: ignore[assignment]
        ready = channel.receive(10, want="ready")
        assert ready is not None
        guest.ready = {**ready, "numa_nodes": 2}  # this host may have one node; the guest two
        yield guest, mode
    finally:
        os.close(slave)
        os.close(master)
        proc.kill()
        proc.wait(5)


def test_hostile_guest_output_is_bounded_rejected_or_escaped(
    hostile_guest: tuple[Guest, Path], postgres_url: str
) -> None:
    guest, mode = hostile_guest
    pool = OnePool(guest)
    cache = guest.config.console_dir.parent / "cache"  # this worker's kernels: one stand-in
    folder = cache / "kernels" / "hostile-kernel"
    folder.mkdir(parents=True)
    (folder / "bzImage").write_bytes(b"stand-in image")
    sha = sha256_of(folder / "bzImage")
    write_manifest(folder, {"path": str(folder / "bzImage"), "sha256": sha})
    results: dict[str, TrialResult] = {}
    for case in ("flood", "big", "truncated", "html", "schema", "binary", "xss"):
        mode.write_text(case)
        message = {
            "trial_id": f"hostile-{case}",
            "token": TOKEN,
            "kernel": {"name": "hostile-kernel", "sha256": sha},
            "deadline_s": 30,
        }
        started = time.monotonic()
        results[case] = execute(pool, message, "hostile-host:1", cache)  # type: ignore[arg-type]
        assert time.monotonic() - started < 25, case  # nothing hangs the worker
    assert guest.channel is not None and guest.channel.bad_frames == 0

    # the worker's side: bounded, or rejected with the reason
    flood = results["flood"]
    assert flood.outcome == "ok" and flood.console_truncated, flood.error
    assert len(flood.console) <= MAX_CONSOLE_BYTES
    assert flood.console.startswith("<5>zapfarm: trial hostile-flood begin")
    assert flood.console.rstrip().endswith("zapfarm: trial hostile-flood end")
    assert guest.console_log.stat().st_size > FLOOD_BYTES
    assert len(guest._read_console(0)) < MAX_CONSOLE_READ + 100  # the worker read a bounded part
    big = results["big"]
    assert big.outcome == "program-error" and len(big.output) <= MAX_OUTPUT_BYTES
    assert "not JSON" in (big.error or "")
    assert "not JSON" in (results["truncated"].error or "")
    assert "not JSON" in (results["html"].error or "")
    schema = results["schema"]
    assert schema.outcome == "program-error" and "failed validation" in (schema.error or "")
    assert "evil" not in (schema.error or "")  # the error names fields, never echoes input
    assert results["binary"].outcome == "program-error"
    assert "\x00" in results["binary"].output  # kept as data until the recorder cleans it
    xss = results["xss"]
    assert xss.outcome == "ok" and xss.program is not None and XSS in xss.program.kernel

    # the control plane's side: each recorded once, with a clear verdict and error
    upgrade(postgres_url)
    engine = make_engine(postgres_url)
    sessions = session_factory(engine)
    try:
        pairs = [(r, judge(r)) for r in results.values()]
        outcomes = record_many(sessions, pairs, clean_console_sample=1.0)
        assert [o.value for o in outcomes] == ["inserted"] * len(results)
        again = record_many(sessions, pairs, clean_console_sample=1.0)  # Celery redelivers
        assert [o.value for o in again] == ["duplicate"] * len(results)
        with sessions() as session:
            rows = {t.trial_id: t for t in session.scalars(sql_select(Trial)).all()}
        assert len(rows) == len(results)
        verdicts = {tid.split("-", 1)[1]: (t.verdict, t.outcome) for tid, t in rows.items()}
        print(f"[hostile output] verdicts: {verdicts}")
        assert verdicts["flood"] == ("clean", "ok") and verdicts["xss"] == ("clean", "ok")
        for case in ("big", "truncated", "html", "schema", "binary"):
            assert verdicts[case] == ("invalid", "program-error"), case
            assert rows[f"hostile-{case}"].error, case
        binary = rows["hostile-binary"]
        assert "\x00" not in json.dumps(binary.result) and "\x00" not in (binary.error or "")
        recorded = sum(1 for t in rows.values() if t.status == "done")
        summary = Tally(
            "hostile output",
            in_flight=len(results),
            expected=len(results),
            recorded=recorded,
            duplicates=len(rows) - len(set(rows)) + sum(o.value != "duplicate" for o in again),
            lost=len(results) - recorded,
        )
        summary.show()
        assert (summary.recorded, summary.duplicates, summary.lost) == (len(results), 0, 0)

        # the web escapes it: no live markup, control characters shown, not obeyed
        client = TestClient(create_app(postgres_url, engine=engine))
        for case in ("flood", "xss", "html", "schema"):
            page = client.get(f"/trials/{rows[f'hostile-{case}'].id}")
            assert page.status_code == 200, (case, page.text[:500])
            html = page.text
            assert "<script>alert" not in html and "<img src=x" not in html, case
            assert "\x1b" not in html and "\u202e" not in html, case
        flood_page = client.get(f"/trials/{rows['hostile-flood'].id}").text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in flood_page
        assert "\\x1b" in flood_page  # ESC made visible
    finally:
        engine.dispose()


def test_the_control_channel_stays_bounded_under_junk() -> None:
    """Megabytes of junk, a frame claiming too much and one that never ends cost no memory."""
    decoder = FrameDecoder()
    junk = (b"\x1b[31m<script>alert(1)</script>@Z" + bytes(range(256))) * 40_000  # ~11 MB
    for start in range(0, len(junk), 1 << 16):
        assert decoder.feed(junk[start : start + (1 << 16)]) == []
        assert len(decoder._buf) < 64
    assert decoder.feed(b"@ZF %d 00000000 " % (MAX_FRAME + 1) + b"x" * 1000) == []
    assert len(decoder._buf) < 1100
    decoder.feed(b"@ZF %d 00000000 " % MAX_FRAME)  # and then never ends
    for _ in range(40):
        decoder.feed(b"y" * 65536)
        assert len(decoder._buf) <= MAX_FRAME + 64  # waits for at most one maximal frame
    assert decoder.feed(b"\n" + encode({"op": "pong", "id": "after"})) == [
        {"op": "pong", "id": "after"}
    ]
    assert decoder.bad_frames >= 2
