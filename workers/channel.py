"""The control channel to the guest agent: framed JSON lines over serial1.

Framing (docs/protocol.md): ``@ZF <length> <crc32> <payload>\\n``. A serial
line can drop or garble bytes and a guest can print anything, so every frame
carries its length and CRC, junk between frames is skipped, and a frame that
does not check out is counted and dropped rather than half-trusted.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import zlib
from collections import deque
from typing import Any

import libvirt

MAGIC = b"@ZF "
MAX_FRAME = 1 << 20  # nothing legitimate from the agent comes near this
_HEADER_MAX = len(MAGIC) + 7 + 1 + 8 + 1  # magic, length (<= 7 digits), crc, spaces


class ChannelError(RuntimeError):
    """The channel broke: the guest is gone or the stream failed."""


def encode(message: dict[str, Any]) -> bytes:
    payload = json.dumps(message, separators=(",", ":"), ensure_ascii=True).encode()
    return b"%s%d %08x %s\n" % (MAGIC, len(payload), zlib.crc32(payload), payload)


class FrameDecoder:
    """Incremental decoder: feed bytes, get whole validated messages back."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self.max_frame = max_frame
        self.bad_frames = 0
        self.junk_bytes = 0

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buf += data
        out: list[dict[str, Any]] = []
        while True:
            start = self._buf.find(MAGIC)
            if start < 0:
                keep = len(MAGIC) - 1  # a magic split across two reads
                self.junk_bytes += max(0, len(self._buf) - keep)
                del self._buf[: max(0, len(self._buf) - keep)]
                return out
            self.junk_bytes += start
            del self._buf[:start]
            header_end = self._buf.find(b" ", len(MAGIC))
            if header_end < 0:
                if len(self._buf) > _HEADER_MAX:
                    self._reject(1)
                    continue
                return out
            crc_end = self._buf.find(b" ", header_end + 1)
            if crc_end < 0:
                if len(self._buf) > _HEADER_MAX:
                    self._reject(1)
                    continue
                return out
            length_text = bytes(self._buf[len(MAGIC) : header_end])
            crc_text = bytes(self._buf[header_end + 1 : crc_end])
            if not length_text.isdigit() or len(crc_text) != 8 or int(length_text) > self.max_frame:
                self._reject(1)
                continue
            length = int(length_text)
            total = crc_end + 1 + length + 1
            newline = self._buf.find(b"\n", crc_end + 1, total - 1)
            if newline >= 0:  # payloads hold no newline: a garbled length, resync now
                self._reject(1)
                continue
            if len(self._buf) < total:
                return out
            payload = bytes(self._buf[crc_end + 1 : crc_end + 1 + length])
            try:
                crc_ok = int(crc_text, 16) == zlib.crc32(payload)
            except ValueError:
                crc_ok = False
            if not crc_ok or self._buf[total - 1 : total] != b"\n":
                self._reject(1)
                continue
            del self._buf[:total]
            try:
                message = json.loads(payload)
            except ValueError:
                self.bad_frames += 1
                continue
            if isinstance(message, dict):
                out.append(message)
            else:
                self.bad_frames += 1

    def _reject(self, skip: int) -> None:
        """Drop a bad frame start and resynchronise on the next magic."""
        self.bad_frames += 1
        del self._buf[:skip]


class Channel:
    """Messages to and from the agent over a libvirt console stream.

    Needs the libvirt event loop running in this process
    (``workers.connection.open_connection`` starts it).
    """

    def __init__(self, conn: libvirt.virConnect, dom: libvirt.virDomain, device: str = "serial1"):
        self._stream = conn.newStream(libvirt.VIR_STREAM_NONBLOCK)
        dom.openConsole(device, self._stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
        self._decoder = FrameDecoder()
        self._inbox: deque[dict[str, Any]] = deque()
        self._cond = threading.Condition()
        self._closed: str | None = None
        self._stream.eventAddCallback(
            libvirt.VIR_STREAM_EVENT_READABLE
            | libvirt.VIR_STREAM_EVENT_ERROR
            | libvirt.VIR_STREAM_EVENT_HANGUP,
            self._on_event,
            None,
        )

    @property
    def bad_frames(self) -> int:
        return self._decoder.bad_frames

    def _on_event(self, stream: libvirt.virStream, events: int, _opaque: object) -> None:
        if events & libvirt.VIR_STREAM_EVENT_READABLE:
            while True:
                try:
                    data = stream.recv(65536)
                except libvirt.libvirtError as exc:
                    self._close(f"console stream failed: {exc}")
                    return
                if data == -2:  # would block
                    break
                if not data:
                    self._close("the guest closed the control channel")
                    return
                messages = self._decoder.feed(data)
                if messages:
                    with self._cond:
                        self._inbox.extend(messages)
                        self._cond.notify_all()
        if events & (libvirt.VIR_STREAM_EVENT_ERROR | libvirt.VIR_STREAM_EVENT_HANGUP):
            self._close("the control channel hung up (guest gone?)")

    def _close(self, why: str) -> None:
        with self._cond:
            if self._closed is None:
                self._closed = why
            self._cond.notify_all()
        with contextlib.suppress(libvirt.libvirtError):
            self._stream.eventRemoveCallback()

    def send(self, message: dict[str, Any]) -> None:
        data = encode(message)
        deadline = time.monotonic() + 10
        while data:
            if self._closed:
                raise ChannelError(self._closed)
            try:
                sent = self._stream.send(data)
            except libvirt.libvirtError as exc:
                raise ChannelError(f"cannot write to the guest: {exc}") from exc
            if sent == -2:
                if time.monotonic() > deadline:
                    raise ChannelError("the guest did not drain the control channel for 10 s")
                time.sleep(0.01)
                continue
            data = data[sent:]

    def receive(self, timeout: float, want: str | None = None) -> dict[str, Any] | None:
        """The next message (with ``op == want`` if given), or None at the deadline."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                while self._inbox:
                    message = self._inbox.popleft()
                    if want is None or message.get("op") == want:
                        return message
                if self._closed:
                    raise ChannelError(self._closed)
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def close(self) -> None:
        self._close("closed by the host")
        with contextlib.suppress(libvirt.libvirtError):
            self._stream.abort()
