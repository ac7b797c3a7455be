"""Reading back the initramfs archives the farm writes, for the tests."""

from __future__ import annotations

import zlib


def gzip_members(data: bytes) -> list[bytes]:
    """Each gzip member of a concatenation, decompressed (the kernel unpacks them in order)."""
    members = []
    while data:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        members.append(d.decompress(data))
        data = d.unused_data
    return members
