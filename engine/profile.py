"""What a loaded model is to the rest of the engine and to the bot: its family, its native
size, its defaults and what it can do (negative prompts, image-to-image, edits, inpainting,
a step cache). `loader.model_profile` makes one per loaded model; `request.validate` reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ModelProfile"]


@dataclass(frozen=True, slots=True)
class ModelProfile:
    """What the loaded model considers normal, so a bare prompt gets sensible settings."""

    name: str
    family: str  # "sd", "sdxl", "flux"... (`engine.families`)
    native_size: int
    default_steps: int
    default_guidance: float
    sampler: str  # human name of the scheduler, as written in PNG metadata
    max_tokens: int = 75  # tokens a prompt may use, BOS/EOS excluded
    has_safety_checker: bool = False
    extra: dict[str, str] = field(default_factory=dict)
    hash: str = ""  # `Model hash` in the PNG's parameters
    description: str = ""
    multiple: int = 8  # width and height are multiples of this (64 for SDXL)
    negative_prompt: bool = True  # whether the family reads a negative prompt
    weighted: bool = True  # whether A1111 weights reach the model (else they are removed)
    family_label: str = ""  # the family as people call it: "SDXL", "FLUX.1"
    img2img: bool = True  # whether the family has an image-to-image pipeline
    #: Pictures an edit by instruction takes at most (0: the model does not edit).
    max_references: int = 0
    #: How an edit's picture is fitted (`sizing.reference_size`): to the one of these sizes
    #: nearest its aspect ratio, else to `reference_area` pixels (0: the native size
    #: squared) at its own aspect ratio, in multiples of `reference_multiple`.
    reference_sizes: tuple[tuple[int, int], ...] = ()
    reference_area: int = 0
    reference_multiple: int = 16
    cache: str = "off"  # its step cache (`[models.<name>] cache`): "off", "deepcache"...
    cache_all: bool = False  # every request cached (`cache_for = "all"`), not only fast ones
    inpaint: bool = False  # whether it inpaints (a picture and a mask)
    inpaint_only: bool = False  # its denoiser reads a mask: it only inpaints (FLUX.1 Fill)
    inpaint_crop: bool = False  # whether its inpaint pipeline takes `padding_mask_crop`

    @property
    def edits(self) -> bool:
        """Whether the model edits pictures by instruction (`/models` shows "edits")."""
        return self.max_references > 0
