"""Stable Diffusion 1.x/2.x and SDXL (and their derivatives: Pony, Illustrious, NoobAI...):
UNet models whose prompts go through CLIP, so A1111 weights and long prompts are applied to
the embeddings (`weighting.py`).

The UNet takes one timestep per sample, so requests of any steps and guidance share a call;
SDXL's extra conditioning (pooled text embeddings, size ids) is per sample too.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType
from typing import Any

import torch

from ..request import ImageRequest
from .base import Family, FamilyDefaults

__all__ = ["SD", "SDXL"]

#: Few-step models recognised by their name, and what is normal for them.
_FEW_STEPS = (("lightning", 4, 1.0), ("lcm", 4, 1.0), ("turbo", 1, 0.0))


def _few_steps(source: str) -> tuple[int, float] | None:
    lowered = source.lower()
    for word, steps, guidance in _FEW_STEPS:
        if word in lowered:
            return steps, guidance
    return None


class SD(Family):
    name = "sd"
    label = "Stable Diffusion"
    half = "float16"
    pipelines = ("StableDiffusionPipeline", "StableDiffusionInpaintPipeline")
    denoiser = "unet"
    positional = ("sample", "timestep")
    weighted = True
    chunked = True
    img2img = MappingProxyType({"StableDiffusionPipeline": "StableDiffusionImg2ImgPipeline"})
    inpaint = MappingProxyType(
        {
            "StableDiffusionPipeline": "StableDiffusionInpaintPipeline",
            "StableDiffusionInpaintPipeline": "StableDiffusionInpaintPipeline",
        }
    )
    base_steps, base_guidance, base_size = 25, 7.0, 512

    def defaults(self, pipe: Any, source: str) -> FamilyDefaults:
        sample = getattr(pipe.unet.config, "sample_size", None)
        scale = getattr(pipe, "vae_scale_factor", 8)
        native = int(sample * scale) if isinstance(sample, int) else self.base_size
        if source.startswith("builtin:"):
            steps, guidance = 4, 7.0
        else:
            steps, guidance = _few_steps(source) or (self.base_steps, self.base_guidance)
        return FamilyDefaults(steps, guidance, native, multiple=self.multiple)

    def mask_reader(self, pipe: Any) -> str | None:
        """An inpainting UNet (9 input channels: latents, mask, masked picture) is served
        by the inpaint pipeline only."""
        if getattr(pipe.unet.config, "in_channels", 4) != 9:
            return None
        return self.inpaint.get(type(pipe).__name__)

    multiple = 8
    sized_img2img = False  # the size is the picture's (validation made it the request's)

    def _negative(self, negatives: list[str]) -> list[str] | None:
        return negatives

    def embeddings(
        self,
        pipe: Any,
        prompt: str,
        negative: str,
        *,
        device: torch.device | str,
        count: int,
        cfg: bool,
        clip_skip: int = 0,
    ) -> Any:
        """A1111's chunked, mean-restoring CLIP weighting (`weighting.encode`)."""
        from .. import weighting

        return weighting.encode(
            pipe,
            self.name,
            prompt,
            negative,
            device=device,
            count=count,
            cfg=cfg,
            clip_skip=clip_skip,
        )

    def texts(
        self, requests: Sequence[ImageRequest], embedded: Sequence[Any] | None
    ) -> dict[str, Any]:
        """Plain prompts (the stock path), or every request's weighted embeddings."""
        if embedded is None:
            return {
                "prompt": self.each_image(requests, "prompt"),
                "negative_prompt": self._negative(self.each_image(requests, "negative_prompt")),
            }
        out: dict[str, Any] = {"prompt_embeds": torch.cat([e.cond for e in embedded])}
        if (requests[0].guidance or 0.0) > 1.0:
            out["negative_prompt_embeds"] = torch.cat([e.uncond for e in embedded])
        return out


class SDXL(SD):
    name = "sdxl"
    label = "SDXL"
    pipelines = ("StableDiffusionXLPipeline", "StableDiffusionXLInpaintPipeline")
    img2img = MappingProxyType({"StableDiffusionXLPipeline": "StableDiffusionXLImg2ImgPipeline"})
    inpaint = MappingProxyType(
        {
            "StableDiffusionXLPipeline": "StableDiffusionXLInpaintPipeline",
            "StableDiffusionXLInpaintPipeline": "StableDiffusionXLInpaintPipeline",
        }
    )
    base_steps, base_guidance, base_size = 30, 6.0, 1024
    multiple = 64

    def _negative(self, negatives: list[str]) -> list[str] | None:
        # SDXL uses zero embeddings for "no negative prompt" but encodes "" when given one, so
        # pass None when nobody asked for one, as a lone request would.
        return negatives if any(negatives) else None

    def texts(
        self, requests: Sequence[ImageRequest], embedded: Sequence[Any] | None
    ) -> dict[str, Any]:
        out = super().texts(requests, embedded)
        if embedded is not None:
            out["pooled_prompt_embeds"] = torch.cat([e.pooled for e in embedded])
            if "negative_prompt_embeds" in out:
                out["negative_pooled_prompt_embeds"] = torch.cat(
                    [e.negative_pooled for e in embedded]
                )
        return out
