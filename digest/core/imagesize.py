"""The pixel size of an image from its first bytes (PNG, GIF, JPEG, WebP). Pure.

Emails need an image's width and height up front (Outlook ignores CSS sizes, and a
missing size makes the layout jump as images load), and feeds often leave them out.
Collecting reads the first bytes of such an image once and keeps the size; the email
still loads the image from its own URL.
"""

from __future__ import annotations

import struct

FIRST_BYTES = 65_536  # JPEG puts its size after the metadata; 64 KiB covers almost all


def image_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) if ``head`` starts a PNG, GIF, JPEG or WebP image; else None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR" and len(head) >= 24:
        width, height = struct.unpack(">II", head[16:24])
        return _sane(width, height)
    if head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        width, height = struct.unpack("<HH", head[6:10])
        return _sane(width, height)
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return _webp(head)
    if head.startswith(b"\xff\xd8"):
        return _jpeg(head)
    return None


def _sane(width: int, height: int) -> tuple[int, int] | None:
    return (width, height) if 0 < width < 100_000 and 0 < height < 100_000 else None


def _webp(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8 " and len(head) >= 30:
        width, height = struct.unpack("<HH", head[26:30])
        return _sane(width & 0x3FFF, height & 0x3FFF)
    if chunk == b"VP8L" and len(head) >= 25:
        bits = int.from_bytes(head[21:25], "little")
        return _sane((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8X" and len(head) >= 30:
        width = int.from_bytes(head[24:27], "little") + 1
        height = int.from_bytes(head[27:30], "little") + 1
        return _sane(width, height)
    return None


# Start-of-frame markers carry the size (not DHT 0xC4, JPG 0xC8 or DAC 0xCC).
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg(head: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 9 < len(head):
        if head[i] != 0xFF:
            return None
        marker = head[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length
            i += 2
            continue
        length = struct.unpack(">H", head[i + 2:i + 4])[0]
        if marker in _SOF:
            height, width = struct.unpack(">HH", head[i + 5:i + 9])
            return _sane(width, height)
        i += 2 + length
    return None
