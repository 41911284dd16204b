"""Pictures to start from, in every PNG colour type and bit depth: decoded to the 8-bit RGB a
viewer shows, never clipped (a 16-bit grayscale PNG used to come out white) and with
transparency flattened onto white.

Each PNG is written byte by byte (`testkit.pictures`), so the real decoder reads exactly what
an editor would save; the expectation is computed from the samples, within 1 level of 255.
"""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image

from engine.picture import decode_picture, to_rgb
from testkit.pictures import GRAY, GRAY_ALPHA, PALETTE, RGB, RGBA, png_bytes

LEVELS = np.tile(np.arange(256, dtype=np.uint32), (3, 1))  # a 256 × 3 gradient, 8-bit
# The same gradient at 16 bits, with low bits that must not matter.
WIDE = np.minimum(LEVELS * 257 + 100, 65535)
WHITE = 255.0


def rgb_of(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[:, :, None], 3, axis=2).astype(np.float64)


def over_white(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """`colour` (8-bit, h × w × 3) with `alpha` (0..1, h × w) flattened onto white."""
    a = alpha[:, :, None]
    return colour * a + WHITE * (1 - a)


def decoded(data: bytes) -> np.ndarray:
    return np.asarray(decode_picture(data), dtype=np.float64)


def assert_close(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == expected.shape
    worst = np.abs(got - expected).max()
    assert worst <= 1.0, f"off by up to {worst:.0f} levels of 255"


HALF = np.full(LEVELS.shape, 0.5)
COLOUR = np.stack([LEVELS, 255 - LEVELS, np.full_like(LEVELS, 7)], axis=2)
CLEAR_LEVEL = 128  # the level a tRNS chunk makes transparent
CLEAR = (LEVELS == CLEAR_LEVEL).astype(np.float64)
PALETTE_COLOURS = [(i, 255 - i, (3 * i) % 256) for i in range(256)]
PALETTE_ALPHA = bytes(255 if i % 3 else i for i in range(256))  # every third entry see-through

CASES = {
    # 16-bit grayscale: Pillow opens it as I;16 and its own convert("RGB") clips it to white.
    "gray-16": (png_bytes(WIDE, GRAY, 16), rgb_of(LEVELS)),
    "gray-16-trns": (
        png_bytes(WIDE, GRAY, 16, transparency=struct.pack(">H", CLEAR_LEVEL * 257 + 100)),
        over_white(rgb_of(LEVELS), 1 - CLEAR),
    ),
    "gray-alpha-16": (
        png_bytes(np.stack([WIDE, np.full_like(WIDE, 32768)], axis=2), GRAY_ALPHA, 16),
        over_white(rgb_of(LEVELS), HALF),
    ),
    "rgb-16": (
        png_bytes(np.minimum(COLOUR * 257 + 100, 65535), RGB, 16),
        COLOUR.astype(np.float64),
    ),
    "rgb-16-trns": (
        png_bytes(
            COLOUR * 257,
            RGB,
            16,
            transparency=struct.pack(">HHH", *(v * 257 for v in (CLEAR_LEVEL, 127, 7))),
        ),
        over_white(COLOUR.astype(np.float64), 1 - CLEAR),
    ),
    "rgba-16": (
        png_bytes(
            np.concatenate([COLOUR * 257, np.full_like(WIDE, 32768)[..., None]], 2), RGBA, 16
        ),
        over_white(COLOUR.astype(np.float64), HALF),
    ),
    "gray-8": (png_bytes(LEVELS, GRAY, 8), rgb_of(LEVELS)),
    "gray-8-trns": (
        png_bytes(LEVELS, GRAY, 8, transparency=struct.pack(">H", CLEAR_LEVEL)),
        over_white(rgb_of(LEVELS), 1 - CLEAR),
    ),
    "gray-alpha-8": (
        png_bytes(np.stack([LEVELS, np.full_like(LEVELS, 128)], axis=2), GRAY_ALPHA, 8),
        over_white(rgb_of(LEVELS), np.full(LEVELS.shape, 128 / 255)),
    ),
    "palette": (
        png_bytes(LEVELS, PALETTE, 8, palette=PALETTE_COLOURS),
        np.asarray(PALETTE_COLOURS, dtype=np.float64)[LEVELS],
    ),
    "palette-alpha": (
        png_bytes(LEVELS, PALETTE, 8, palette=PALETTE_COLOURS, transparency=PALETTE_ALPHA),
        over_white(
            np.asarray(PALETTE_COLOURS, dtype=np.float64)[LEVELS],
            np.frombuffer(PALETTE_ALPHA, dtype=np.uint8)[LEVELS] / 255,
        ),
    ),
    "rgb-8-trns": (
        png_bytes(COLOUR, RGB, 8, transparency=struct.pack(">HHH", CLEAR_LEVEL, 127, 7)),
        over_white(COLOUR.astype(np.float64), 1 - CLEAR),
    ),
    "rgba-8": (
        png_bytes(np.concatenate([COLOUR, np.full_like(LEVELS, 128)[..., None]], 2), RGBA, 8),
        over_white(COLOUR.astype(np.float64), np.full(LEVELS.shape, 128 / 255)),
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_every_png_colour_type_and_depth_decodes_to_what_a_viewer_shows(case: str) -> None:
    data, expected = CASES[case]
    assert_close(decoded(data), expected)


@pytest.mark.parametrize(
    ("mode", "samples"),
    [
        ("I;16", WIDE.astype(np.uint16)),
        ("I;16B", WIDE.astype(">u2")),
        ("I", WIDE.astype(np.int32)),  # older Pillow opens 16-bit grayscale PNGs as I
        ("F", (LEVELS / 255).astype(np.float32)),  # float pictures hold 0..1
    ],
)
def test_wide_pillow_modes_are_scaled_not_clipped(mode: str, samples: np.ndarray) -> None:
    """Modes no accepted format produces today, but Pillow may hand over (another version,
    a caller's own image): scaled by their full range too."""
    image = Image.frombytes(mode, (samples.shape[1], samples.shape[0]), samples.tobytes())
    assert image.mode == mode
    assert_close(np.asarray(to_rgb(image), dtype=np.float64), rgb_of(LEVELS))


def test_a_float_picture_with_nan_and_out_of_range_values_is_still_a_picture() -> None:
    values = np.array([[np.nan, -1.0, 0.5, 2.0, np.inf]], dtype=np.float32)
    image = Image.frombytes("F", (5, 1), values.tobytes())
    assert np.asarray(to_rgb(image))[0, :, 0].tolist() == [0, 0, 128, 255, 255]


def test_a_16_bit_picture_keeps_its_exif_orientation() -> None:
    """The EXIF turn happens before the scaling: both apply."""
    tall = Image.frombytes("I;16", (256, 3), WIDE.astype(np.uint16).tobytes())
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to view
    buf = io.BytesIO()
    tall.save(buf, format="PNG", exif=exif)
    upright = decoded(buf.getvalue())
    assert upright.shape == (256, 3, 3)
    assert_close(upright, np.rot90(rgb_of(LEVELS), k=-1))
