"""What a finished request gives back. Pure Python: front ends import it without torch."""

from __future__ import annotations

from dataclasses import dataclass

from .request import ImageRequest

__all__ = ["GeneratedImage", "GenerationResult"]


@dataclass(frozen=True, slots=True)
class GeneratedImage:
    """One PNG with its seed; `flagged` is the safety checker's verdict (False when none ran);
    `fixed`: what `/imagine fix:` found and fixed in it ("faces", "hands"; empty: nothing
    asked, or nothing found, so it is as it was made)."""

    png: bytes
    seed: int
    index: int
    width: int
    height: int
    flagged: bool = False
    fixed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class GenerationResult:
    """A request's images, in seed order, and how it went."""

    request: ImageRequest
    images: tuple[GeneratedImage, ...]
    model: str
    sampler: str
    warnings: tuple[str, ...] = ()
    queued_s: float = 0.0  # time from submit to the start of its batch
    run_s: float = 0.0  # time its batch took on the worker
    batch_images: int = 0  # images in the pipeline call that made it
    #: Images of the request left out because their numbers were not finite (NaN or
    #: infinity: they would be black): `images` holds the others, each with its own `index`.
    failed: int = 0

    @property
    def any_flagged(self) -> bool:
        return any(image.flagged for image in self.images)
