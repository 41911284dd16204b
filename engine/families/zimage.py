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

from collections.abc import Sequence
from types import MappingProxyType
from typing import Any

import torch

from .. import weighting
from ..request import ImageRequest
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

    def defaults(self, pipe: Any, source: str) -> FamilyDefaults:
        steps, guidance = _TURBO if "turbo" in source.lower() else _BASE
        native = 1024  # what the stock call makes without a size
        if source.startswith("builtin:"):
            native, steps = 64, 4
        return FamilyDefaults(steps, guidance, native, multiple=pipe.vae_scale_factor * 2)

    def batch_kwargs(
        self,
        pipe: Any,
        requests: Sequence[ImageRequest],
        generators: list[torch.Generator],
        texts: Any,
    ) -> dict[str, Any]:
        first = requests[0]
        kwargs: dict[str, Any] = {
            "prompt": [weighting.plain_text(r.prompt) for r in requests for _ in range(r.count)],
            "negative_prompt": [
                weighting.plain_text(r.negative_prompt) for r in requests for _ in range(r.count)
            ],
            "num_inference_steps": first.steps,
            "guidance_scale": first.guidance,
            "generator": generators,
            "output_type": "np",  # floats, so NaN shows (`torch_ops.pictures`)
            "width": first.width,
            "height": first.height,
        }
        if first.init_image is not None:
            pictures = [r.init_image for r in requests for _ in range(r.count)]
            kwargs |= {"image": pictures, "strength": first.strength}
        return kwargs

    def call_kwargs(
        self, pipe: Any, request: ImageRequest, generators: list[torch.Generator], texts: Any
    ) -> dict[str, Any]:
        return self.batch_kwargs(pipe, [request], generators, texts)

    def rows(self, call: DenoiserCall) -> int:
        latents = call.args[0] if call.args else call.kwargs["x"]
        return len(latents)
