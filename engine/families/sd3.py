"""Stable Diffusion 3 and 3.5 (medium, large, large turbo): MMDiT transformers over 16-channel
latents cut into 2x2 patches.

Prompts go through two CLIP encoders (pooled and sequence) and T5. The sequence has one
length for every prompt (77 CLIP tokens, then the pipeline's `max_sequence_length` T5
tokens), so requests of one size share a call whatever their prompts. Guidance is true
classifier-free guidance, and the stock pipeline puts the negative and the positive rows into
ONE transformer call (over guidance 1), so a step is one call whatever the guidance; the
transformer takes one timestep per sample, so requests of any steps and guidance share it.
The scheduler's shift (a static 3.0 for SD3.5) is the stock pipeline's own, per request.
A1111 weights scale the rows of both CLIP sequences and of T5's (`weighting_t5`), keeping
that one length. SD3.5 medium's skip-layer
guidance stays off, as in a bare stock call.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType
from typing import Any

import torch

from .. import weighting_t5
from ..request import ImageRequest
from .base import Family, FamilyDefaults, call_default

__all__ = ["SD3"]


def _recipe(config: Any, source: str) -> tuple[int, float]:
    """Steps and guidance from the model cards: the variant shows in the transformer's
    config (SD3.5 adds QK norm, its medium also dual-attention layers); turbo only in the name."""
    if "turbo" in source.lower():  # SD3.5 large turbo (distilled): 4 steps, no guidance
        return 4, 0.0
    if getattr(config, "dual_attention_layers", None):  # SD3.5 medium (MMDiT-X)
        return 40, 4.5
    if getattr(config, "qk_norm", None):  # SD3.5 large
        return 28, 3.5
    return 28, 7.0  # SD3 medium: the stock pipeline's own defaults


class SD3(Family):
    name = "sd3"
    label = "SD3"
    pipelines = ("StableDiffusion3Pipeline",)
    denoiser = "transformer"
    positional = ("hidden_states", "encoder_hidden_states", "pooled_projections", "timestep")
    shared = frozenset({"joint_attention_kwargs", "skip_layers"})
    negative_prompt = True
    weighted = True
    img2img = MappingProxyType({"StableDiffusion3Pipeline": "StableDiffusion3Img2ImgPipeline"})
    inpaint = MappingProxyType({"StableDiffusion3Pipeline": "StableDiffusion3InpaintPipeline"})

    def defaults(self, pipe: Any, source: str) -> FamilyDefaults:
        native = pipe.default_sample_size * pipe.vae_scale_factor
        steps, guidance = _recipe(pipe.transformer.config, source)
        if source.startswith("builtin:"):
            steps = 4
        # The pipeline refuses sizes that are not whole patches of latents.
        multiple = pipe.vae_scale_factor * pipe.transformer.config.patch_size
        return FamilyDefaults(steps, guidance, native, multiple)

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
        """Both CLIPs' and T5's rows scaled by their weights, the pooled outputs as stock."""
        length = call_default(pipe, "max_sequence_length", 256)
        return weighting_t5.encode_sd3(
            pipe,
            prompt,
            negative,
            device=device,
            count=count,
            cfg=cfg,
            length=length,
            clip_skip=clip_skip,
        )

    def texts(
        self, requests: Sequence[ImageRequest], embedded: Sequence[Any] | None
    ) -> dict[str, Any]:
        """Plain prompts (the stock path), or every request's weighted embeddings (the
        negative ones where guidance is over 1, as the stock call reads them)."""
        if embedded is None:
            return super().texts(requests, embedded)
        out = {
            "prompt_embeds": torch.cat([e.cond for e in embedded]),
            "pooled_prompt_embeds": torch.cat([e.pooled for e in embedded]),
        }
        if (requests[0].guidance or 0.0) > 1.0:
            out["negative_prompt_embeds"] = torch.cat([e.uncond for e in embedded])
            out["negative_pooled_prompt_embeds"] = torch.cat([e.negative_pooled for e in embedded])
        return out
