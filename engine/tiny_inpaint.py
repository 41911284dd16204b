"""Tiny random-weight models that only inpaint, built in code like `builtin:tiny`:
`builtin:tiny-sd-inpaint` (an SD inpainting UNet: 9 input channels, the latents, the mask
and the masked picture's latents, saved as `StableDiffusionInpaintPipeline` like the real
inpainting models) and `builtin:tiny-flux-fill` (FLUX.1 Fill: a transformer reading the
packed mask and masked picture beside the latents, saved as `FluxFillPipeline`).

Shaped like `builtin:tiny` and `builtin:tiny-flux-dev` (the same tokenizers and encoders,
`tiny_parts`); saved once and loaded back through the real `from_pretrained`. Their images
are noise, by design.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .tiny_parts import (
    clip_tokenizer,
    save_pipeline,
    tiny_scheduler,
    tiny_text_config,
    tiny_unet,
    tiny_vae,
)

__all__ = ["INPAINT_BUILDERS", "build_flux_fill", "build_sd_inpaint"]


def build_sd_inpaint(root: Path, *, seed: int = 5) -> None:
    """An SD 1.x inpainting model: `builtin:tiny`'s shape with a 9-channel UNet input."""
    import torch
    from diffusers import StableDiffusionInpaintPipeline
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = clip_tokenizer()
    pipe = StableDiffusionInpaintPipeline(
        vae=tiny_vae(),
        text_encoder=CLIPTextModel(tiny_text_config(tokenizer)),
        tokenizer=tokenizer,
        unet=tiny_unet(in_channels=9),
        scheduler=tiny_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    save_pipeline(pipe, root)


def build_flux_fill(root: Path, *, seed: int = 6) -> None:
    """FLUX.1 Fill shaped: FLUX.1 dev's tiny parts, its transformer reading 16 packed latent
    channels, 16 of the masked picture and 256 of the mask (8x8 pixels per latent, packed
    2x2), as the real one reads 64 + 64 + 256."""
    import torch
    from diffusers import FluxFillPipeline, FluxTransformer2DModel

    from .tiny_dit import FLUX_SHAPE, flux_parts

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        **{**FLUX_SHAPE, "in_channels": 16 + 16 + 256},
        out_channels=16,
        pooled_projection_dim=32,
        guidance_embeds=True,
    )
    save_pipeline(FluxFillPipeline(**flux_parts(transformer, dynamic=True)), root)


#: Builtin name -> its builder (called with the folder to write).
INPAINT_BUILDERS: dict[str, Any] = {
    "builtin:tiny-sd-inpaint": build_sd_inpaint,
    "builtin:tiny-flux-fill": build_flux_fill,
}
