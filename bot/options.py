"""What a user asked `/imagine` for (`jobs/convert.py` turns it into an engine request).

The size choices are shapes, not pixels: each maps to sizes the loaded model was trained
near (512 → 512x512, 512x768, 768x512; 1024 → 1024x1024, 832x1216, 1216x832), scaled down
to fit the operator's `max_width`/`max_height`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from engine import ASPECT_RATIOS, MAX_STRENGTH, MIN_STRENGTH, Limits

from .errors import BotError
from .pictures import PictureRef

__all__ = ["MAX_PROMPT", "ImagineOptions", "InvalidShape", "Shape", "parse_shape", "size_for"]

#: Characters a prompt (or negative prompt) may have: declared to Discord and checked by
#: `ImagineOptions.problem` for payloads that did not come through Discord's checks.
MAX_PROMPT = 1000


class Shape(enum.StrEnum):
    SQUARE = "square"
    PORTRAIT = "portrait"
    LANDSCAPE = "landscape"


class InvalidShape(BotError):
    """A `size` Discord would never send (it offers only the choices): a forged payload."""


def parse_shape(size: str | None) -> Shape | None:
    """The `size` option as a `Shape`; anything else is refused with the valid choices."""
    if not size:
        return None
    try:
        return Shape(size)
    except ValueError:
        shown = repr(size) if len(repr(size)) <= 40 else repr(size)[:39] + "…"
        choices = ", ".join(s.value for s in Shape)
        raise InvalidShape(f"{shown} is not a valid size: choose one of {choices}.") from None


def _round8(value: float) -> int:
    return max(8, round(value / 8) * 8)


def size_for(shape: Shape, native: int, limits: Limits) -> tuple[int, int]:
    """(width, height) for `shape` on a model whose native size is `native`."""
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


@dataclass(frozen=True, slots=True)
class ImagineOptions:
    """One `/imagine` (or reroll): `None` means the model's default."""

    prompt: str
    negative: str = ""
    seed: int | None = None
    steps: int | None = None
    guidance: float | None = None
    shape: Shape | None = None
    width: int | None = None  # exact size (rerolls); wins over `shape`
    height: int | None = None
    count: int = 1
    aspect: str | None = None  # "16:9": the model's native area at that aspect ratio
    picture: PictureRef | None = None  # an attachment to start from (image-to-image)
    strength: float | None = None  # with a picture: how much of it may change
    model: str | None = None  # a configured model's name (None: the default one)

    def problem(self) -> str | None:
        """Why Discord would never have sent these options (a forged payload), else None."""
        for name, text in (("prompt", self.prompt), ("negative prompt", self.negative)):
            if len(text) > MAX_PROMPT:
                return f"The {name} is too long (limit {MAX_PROMPT} characters)."
        if self.aspect is not None and self.aspect not in ASPECT_RATIOS:
            return f"The aspect ratio must be one of {', '.join(ASPECT_RATIOS)}."
        if self.aspect is not None and self.shape is not None:
            return "Choose a size or an aspect ratio, not both."
        if self.strength is not None and not MIN_STRENGTH <= self.strength <= MAX_STRENGTH:
            return f"Strength must be between {MIN_STRENGTH:g} and {MAX_STRENGTH:g}."
        return None
