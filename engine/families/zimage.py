"""Z-Image (Turbo and base): a single-stream transformer reading a Qwen3 text model's hidden
states, over 16-channel latents (Flux's VAE) cut into 2x2 patches.

Its transformer takes per-sample LISTS: one latent `(C, 1, h, w)` and one caption feature
`(tokens, width)` per row, each caption as long as its own prompt (the padding is dropped
before the call), and pads and masks them itself. So requests with prompts of any length
share one forward: the lists of every call are joined in order (`Family.merge` joins lists),
the output list is cut back by each call's row count (`rows` counts list items, not a
tensor's first dimension). The transformer takes one timestep per row. Guidance is true
classifier-free guidance on ANY guidance over 0 (`pos + g * (pos - neg)`: diffusers' scale g
is the usual scale g + 1), with the positive and negative rows in ONE call, so a step is one
call whatever the guidance; Z-Image-Turbo runs without it. The scheduler (static shift) is
the stock pipeline's own, per request. A1111 weights are removed from the text.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from .base import DenoiserCall, Family, FamilyDefaults

__all__ = ["ZImage"]

#: Z-Image-Turbo's model card: 8 steps since diffusers' fix of its redundant last timestep (9
#: before; diffusers PR 13730), no guidance. The base model gets the stock call's defaults.
_TURBO = (8, 0.0)
_BASE = (50, 5.0)


class ZImage(Family):
    name = "zimage"
    label = "Z-Image"
    pipelines = ("ZImagePipeline",)
    denoiser = "transformer"
    positional = ("x", "t", "cap_feats")
    shared = frozenset({"joint_attention_kwargs", "patch_size", "f_patch_size"})
    negative_prompt = True
    img2img = MappingProxyType({"ZImagePipeline": "ZImageImg2ImgPipeline"})
    inpaint = MappingProxyType({"ZImagePipeline": "ZImageInpaintPipeline"})

    def defaults(self, pipe: Any, source: str) -> FamilyDefaults:
        steps, guidance = _TURBO if "turbo" in source.lower() else _BASE
        native = 1024  # what the stock call makes without a size
        if source.startswith("builtin:"):
            native, steps = 64, 4
        return FamilyDefaults(steps, guidance, native, multiple=pipe.vae_scale_factor * 2)

    def rows(self, call: DenoiserCall) -> int:
        latents = call.args[0] if call.args else call.kwargs["x"]
        return len(latents)
