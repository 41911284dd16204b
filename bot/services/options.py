"""What a user asked `/imagine` or `/edit` for (`jobs/convert.py` makes it an engine request).

The size choices are shapes, not pixels (`engine.sizing`): the engine turns them, like an
aspect ratio, into the sizes the request's model was trained near.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine import ASPECT_RATIOS, MAX_STRENGTH, MIN_STRENGTH
from engine.fixing import FIX_CHOICES, FIX_TARGETS

from ..images.pictures import PictureRef

__all__ = ["MAX_PROMPT", "ImagineOptions"]

#: Characters a prompt (or negative prompt) may have: declared to Discord and checked by
#: `ImagineOptions.problem` for payloads that did not come through Discord's checks.
MAX_PROMPT = 1000


@dataclass(frozen=True, slots=True)
class ImagineOptions:
    """One `/imagine` (or reroll): `None` means the model's default."""

    prompt: str
    negative: str = ""
    seed: int | None = None
    steps: int | None = None
    guidance: float | None = None
    shape: str | None = None  # a `Shape` value; the engine refuses any other
    width: int | None = None  # exact size (rerolls); wins over `shape`
    height: int | None = None
    count: int = 1
    aspect: str | None = None  # "16:9": the model's native area at that aspect ratio
    picture: PictureRef | None = None  # an attachment to start from (image-to-image)
    strength: float | None = None  # with a picture: how much of it may change
    model: str | None = None  # a configured model's name (None: the default one)
    fast: bool = False  # quality:fast: the model's step cache (faster, slightly different)
    #: `fix:`: what to fix once the images are made ("faces", "hands"; `engine.fixing`)
    fix: tuple[str, ...] = ()
    #: `/edit`: the pictures to edit by instruction (`prompt` says what to change)
    references: tuple[PictureRef, ...] = ()

    def problem(self) -> str | None:
        """Why Discord would never have sent these options (a forged payload), else None."""
        for name, text in (("prompt", self.prompt), ("negative prompt", self.negative)):
            if len(text) > MAX_PROMPT:
                return f"The {name} is too long (limit {MAX_PROMPT} characters)."
        if self.aspect is not None and self.aspect not in ASPECT_RATIOS:
            return f"The aspect ratio must be one of {', '.join(ASPECT_RATIOS)}."
        if self.strength is not None and not MIN_STRENGTH <= self.strength <= MAX_STRENGTH:
            return f"Strength must be between {MIN_STRENGTH:g} and {MAX_STRENGTH:g}."
        if any(target not in FIX_TARGETS for target in self.fix):
            return f"Fix must be one of {', '.join(FIX_CHOICES)}."
        return None
