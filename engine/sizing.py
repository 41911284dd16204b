"""Every way a request names its size, turned into pixels in one place.

A request gives at most one of: an exact `width`/`height`, a `shape` (square, portrait,
landscape: the sizes the model was trained near), an aspect ratio `aspect` ("16:9": the
model's native area at that ratio), or nothing (the model's native size; an image-to-image
request keeps its picture's aspect ratio). All of them depend on the request's model, so
they are resolved by the engine's validation, never by a front end.

Pure Python (no torch).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence

from .config import Limits
from .errors import InvalidRequest

__all__ = [
    "ASPECT_RATIOS",
    "Shape",
    "fit_aspect",
    "parse_aspect",
    "parse_shape",
    "reference_size",
    "resolve_size",
    "size_for",
]

#: The widest (and tallest) an edit's picture may be: wider ones are cropped to it.
MAX_REFERENCE_ASPECT = 4.0

#: The aspect ratios offered to users (any "W:H" with small whole numbers is accepted).
ASPECT_RATIOS = ("1:1", "4:3", "3:4", "3:2", "2:3", "16:9", "9:16")


class Shape(enum.StrEnum):
    SQUARE = "square"
    PORTRAIT = "portrait"
    LANDSCAPE = "landscape"


def parse_shape(size: str | None) -> Shape | None:
    """A `size` choice as a `Shape` (None for none); `InvalidRequest` with the valid choices."""
    if not size:
        return None
    try:
        return Shape(size)
    except ValueError:
        shown = repr(size) if len(repr(size)) <= 40 else repr(size)[:39] + "…"
        choices = ", ".join(s.value for s in Shape)
        raise InvalidRequest(
            "size", f"{shown} is not a valid size: choose one of {choices}."
        ) from None


def parse_aspect(text: str) -> float:
    """Width / height from "W:H" (whole numbers from 1 to 100); `InvalidRequest` otherwise."""
    w, sep, h = str(text).strip().partition(":")
    if not sep or not w.isdigit() or not h.isdigit() or not (0 < int(w) <= 100 >= int(h) > 0):
        raise InvalidRequest(
            "ar", f"The aspect ratio must look like 16:9 (whole numbers up to 100), not {text!r}."
        )
    return int(w) / int(h)


def _round8(value: float) -> int:
    return max(8, round(value / 8) * 8)


def size_for(shape: Shape, native: int, limits: Limits) -> tuple[int, int]:
    """(width, height) for `shape` on a model whose native size is `native`: the sizes such
    models were trained near (512 → 512x512, 512x768; 1024 → 1024x1024, 832x1216), scaled
    down to fit the limits."""
    if shape is Shape.SQUARE:
        width, height = native, native
    elif native >= 1024:  # SDXL's own aspect buckets: 832x1216 for 1024
        width, height = _round8(native * 13 / 16), _round8(native * 19 / 16)
    else:  # SD 1.x/2.x (and the tiny test model): 2:3
        width, height = native, _round8(native * 3 / 2)
    if shape is Shape.LANDSCAPE:
        width, height = height, width
    scale = min(1.0, limits.max_width / width, limits.max_height / height)
    if scale < 1.0:
        width, height = _round8(width * scale), _round8(height * scale)
    return max(width, limits.min_size), max(height, limits.min_size)


def fit_aspect(aspect: float, area: int, limits: Limits, *, multiple: int = 8) -> tuple[int, int]:
    """Width and height near `area` pixels at `aspect` (width / height), in multiples of
    `multiple`, scaled (keeping the aspect) to fit between the size limits."""
    width = math.sqrt(area * aspect)
    height = width / aspect
    low = -(-limits.min_size // multiple) * multiple
    grow = max(1.0, low / width, low / height)  # a small native area: keep the aspect
    scale = min(grow, limits.max_width / width, limits.max_height / height)
    width, height = width * scale, height * scale

    def snap(value: float, low: int, high: int) -> int:
        snapped = max(multiple, round(value / multiple) * multiple)
        return max(low, min(high - high % multiple, snapped))

    return snap(width, low, limits.max_width), snap(height, low, limits.max_height)


def resolve_size(
    *,
    width: int | None,
    height: int | None,
    shape: str | None,
    aspect: str | None,
    picture_aspect: float | None,
    native: int,
    multiple: int,
    limits: Limits,
) -> tuple[int | None, int | None]:
    """The request's width and height before range checks (None: the model's native size).

    `picture_aspect` is an image-to-image request's picture's width / height.
    """
    given = [
        name
        for name, value in (("a size", shape), ("an aspect ratio", aspect))
        if value is not None
    ]
    if width is not None or height is not None:
        given.append("a width or height")
    if len(given) > 1:
        raise InvalidRequest("ar", f"Give {given[0]} or {given[1]}, not both.")
    if shape is not None:
        parsed = parse_shape(shape)
        assert parsed is not None
        return size_for(parsed, native, limits)
    if aspect is not None:
        return fit_aspect(parse_aspect(aspect), native**2, limits, multiple=multiple)
    if picture_aspect is not None and width is None and height is None:
        # The model's native area at the picture's own aspect ratio.
        return fit_aspect(picture_aspect, native**2, limits, multiple=multiple)
    return width, height


def reference_size(
    width: int,
    height: int,
    *,
    sizes: Sequence[tuple[int, int]],
    area: int,
    multiple: int,
    min_side: int = 64,
) -> tuple[int, int]:
    """The size an edit's `width` x `height` picture is fitted to: the one of `sizes` nearest
    its aspect ratio (chosen as `FluxKontextPipeline` chooses among its preferred
    resolutions), else `area` pixels at its aspect ratio in multiples of `multiple` (as
    `QwenImageEditPlusPipeline`'s `calculate_dimensions`), at least `min_side` a side (FLUX.2
    klein refuses less than 64). The size the edit pipeline would resize it to itself: its
    own resizing is then a no-op, and the picture's tokens are known before it runs (the
    batch key has them). Aspect ratios beyond 4:1 are cropped to it (klein refuses 8:1)."""
    aspect = min(max(width / max(1, height), 1 / MAX_REFERENCE_ASPECT), MAX_REFERENCE_ASPECT)
    if sizes:
        _, w, h = min((abs(aspect - w / h), w, h) for w, h in sizes)
        return w, h
    exact = math.sqrt(area * aspect)
    grow = max(1.0, min_side / min(exact, exact / aspect))

    def snap(value: float) -> int:
        return max(multiple, round(value * grow / multiple) * multiple)

    return snap(exact), snap(exact / aspect)
