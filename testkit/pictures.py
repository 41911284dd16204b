"""PNG files written byte by byte, in every colour type and bit depth the format has.

Pillow cannot save most of them (16-bit RGB, grayscale with a `tRNS` colour at 16 bits...),
and those are exactly the files a member may send: this writes them from the PNG
specification (signature, IHDR, PLTE, tRNS, one IDAT of unfiltered rows, IEND), so a test
feeds the real decoder what a camera or an editor would.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

import numpy as np

__all__ = ["GRAY", "GRAY_ALPHA", "PALETTE", "RGB", "RGBA", "png_bytes"]

#: PNG colour types (IHDR byte 9).
GRAY, RGB, PALETTE, GRAY_ALPHA, RGBA = 0, 2, 3, 4, 6
_CHANNELS = {GRAY: 1, RGB: 3, PALETTE: 1, GRAY_ALPHA: 2, RGBA: 4}


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(
    samples: np.ndarray,
    colour_type: int,
    depth: int,
    *,
    palette: Sequence[tuple[int, int, int]] | None = None,
    transparency: bytes | None = None,
) -> bytes:
    """A PNG of `samples` ((height, width) or (height, width, channels), unsigned whole
    numbers below 2**depth; depth 8 or 16), with an optional palette and `tRNS` chunk
    (its raw bytes, as the specification lays them out for the colour type)."""
    pixels = np.asarray(samples)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    height, width, channels = pixels.shape
    if channels != _CHANNELS[colour_type] or depth not in (8, 16):
        raise ValueError(f"{channels} channels at {depth} bits for colour type {colour_type}")
    raw = pixels.astype(">u2" if depth == 16 else "u1")
    rows = b"".join(b"\x00" + row.tobytes() for row in raw)  # filter type 0 on every row
    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    out = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
    if palette is not None:
        out += _chunk(b"PLTE", bytes(np.asarray(palette, dtype="u1").ravel()))
    if transparency is not None:
        out += _chunk(b"tRNS", transparency)
    return out + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b"")
