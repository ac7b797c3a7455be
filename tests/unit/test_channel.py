"""Framing of the control channel: intact frames pass, anything else is dropped and counted."""

from __future__ import annotations

import json
import random
import zlib

from workers.channel import MAX_FRAME, FrameDecoder, encode


def test_round_trip_of_a_long_exchange_in_random_chunks() -> None:
    rng = random.Random(7)
    messages = [
        {"op": "result", "id": f"t-{i}", "output": "x" * rng.randrange(0, 3000), "n": i}
        for i in range(300)
    ]
    stream = b"".join(encode(m) for m in messages)
    decoder = FrameDecoder()
    got = []
    pos = 0
    while pos < len(stream):
        step = rng.randrange(1, 200)
        got += decoder.feed(stream[pos : pos + step])
        pos += step
    assert got == messages
    assert decoder.bad_frames == 0 and decoder.junk_bytes == 0


def test_junk_between_frames_is_skipped() -> None:
    decoder = FrameDecoder()
    data = b"[    3.1] random kernel noise\r\n" + encode({"op": "ready"}) + b"\x00\xff@Z@ZF"
    data += encode({"op": "pong", "id": "p"})
    assert decoder.feed(data) == [{"op": "ready"}, {"op": "pong", "id": "p"}]
    assert decoder.junk_bytes > 0


def test_corrupted_frame_is_dropped_and_the_next_one_survives() -> None:
    good = encode({"op": "result", "id": "a", "output": "hello"})
    flipped = bytearray(good)
    flipped[-5] ^= 0x20  # one bit flipped in the payload: CRC mismatch
    decoder = FrameDecoder()
    out = decoder.feed(bytes(flipped) + encode({"op": "pong", "id": "b"}))
    assert out == [{"op": "pong", "id": "b"}]
    assert decoder.bad_frames == 1


def test_lost_bytes_do_not_swallow_the_next_frame() -> None:
    """A frame that lost bytes has a length that runs into the next frame: resync at the newline."""
    good = encode({"op": "result", "id": "a", "output": "y" * 100})
    truncated = good[:40] + good[60:]
    decoder = FrameDecoder()
    assert decoder.feed(truncated + encode({"op": "pong", "id": "b"})) == [
        {"op": "pong", "id": "b"}
    ]
    assert decoder.bad_frames == 1


def test_oversized_length_is_rejected_without_buffering_it() -> None:
    decoder = FrameDecoder()
    header = b"@ZF %d 00000000 " % (MAX_FRAME + 1)
    assert decoder.feed(header + b"{}" + b"\n" + encode({"op": "pong"})) == [{"op": "pong"}]
    assert decoder.bad_frames == 1


def test_valid_frame_holding_non_object_json_is_counted_bad() -> None:
    payload = json.dumps([1, 2]).encode()
    frame = b"@ZF %d %08x %s\n" % (len(payload), zlib.crc32(payload), payload)
    decoder = FrameDecoder()
    assert decoder.feed(frame) == []
    assert decoder.bad_frames == 1


def test_encode_escapes_everything_to_one_ascii_line() -> None:
    frame = encode({"op": "x", "s": "a\nb\u2603<script>"})
    assert frame.count(b"\n") == 1 and frame.endswith(b"\n")
    assert frame.isascii()
