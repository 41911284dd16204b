"""FLUX.2 [klein]: a FLUX.2 transformer over 2x2-patchified latents whose prompts are read
by Qwen3 (hidden states of three of its layers, stacked).

Guidance. The step-distilled klein models (`is_distilled` in the pipeline's config: 4 steps)
ignore guidance and call the transformer once a step. The base models use true
classifier-free guidance against an empty prompt (the pipeline takes no negative prompt),
calling the transformer twice a step when guidance is over 1; a request's `guidance` is the
pipeline's `guidance_scale` either way, and the defaults are the pipeline's and the model
cards' (base: 50 steps, 4.0; distilled: 4 steps, 1.0).

Batching. The transformer takes per-sample timesteps and no text mask: the pipeline pads
every prompt to `max_sequence_length` (512) tokens, so every call's text has one length. Its
position ids (`txt_ids`, `img_ids`) come per sample but it reads only the first row, so they
must be equal across a merged call: they depend only on the size and the text length, which
a group shares, and `merge` checks it.

Image-to-image: none. `Flux2KleinPipeline`'s `image` is not an init image with a strength
(and `Flux2KleinInpaintPipeline` needs a mask), so `img2img` is empty and validation refuses
an init image for this family.

Editing: that `image` is a list of reference pictures (up to four here) for an edit by
instruction: their latents are appended to the image tokens of every transformer call
(positions of their own, the noise stays pure). The pictures are shared by every image of a
call, so one call holds one request's edit (batch scheduling runs each as its own call with
merged denoiser calls), and only edits of the same picture sizes share a forward (the batch
key has them). Validation fits each picture to the native area at its aspect ratio, in
multiples of 16, which the pipeline then takes as it is.

Inpainting (a picture and a mask): `Flux2KleinInpaintPipeline`.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType
from typing import Any

import torch

from ..request import ImageRequest
from .base import DenoiserCall, Family, FamilyDefaults, call_default

__all__ = ["Flux2Klein"]


class Flux2Klein(Family):
    """FLUX.2 [klein]: `guidance` is `guidance_scale` (true CFG against an empty prompt on
    the base models, ignored by the distilled ones); text-to-image, and edits with up to four
    reference pictures (see the module doc)."""

    name = "flux2"
    label = "FLUX.2 [klein]"
    pipelines = ("Flux2KleinPipeline",)
    denoiser = "transformer"
    positional = ("hidden_states", "encoder_hidden_states", "timestep", "img_ids", "txt_ids")
    shared = frozenset(
        {
            "joint_attention_kwargs",
            "kv_cache",
            "kv_cache_mode",
            "num_ref_tokens",
            "ref_fixed_timestep",
        }
    )
    negative_prompt = False
    multiple = 16  # 8x latents, patchified 2x2
    edits = MappingProxyType({"Flux2KleinPipeline": 4})
    one_edit_per_call = True
    inpaint = MappingProxyType({"Flux2KleinPipeline": "Flux2KleinInpaintPipeline"})

    def defaults(self, pipe: Any, source: str) -> FamilyDefaults:
        native = pipe.default_sample_size * pipe.vae_scale_factor
        if pipe.config.get("is_distilled", False):
            steps, guidance = 4, 1.0
        else:
            steps = call_default(pipe, "num_inference_steps", 50)
            guidance = float(call_default(pipe, "guidance_scale", 4.0))
        if source.startswith("builtin:"):
            native, steps = 64, 4
        return FamilyDefaults(steps, guidance, native, self.multiple)

    def merge(self, calls: Sequence[DenoiserCall]) -> DenoiserCall:
        merged = super().merge(calls)
        named = [{**dict(zip(self.positional, c.args, strict=False)), **c.kwargs} for c in calls]
        for name in ("txt_ids", "img_ids"):
            rows = [n[name][0] if n[name].ndim == 3 else n[name] for n in named]
            if any(not torch.equal(row, rows[0]) for row in rows[1:]):
                raise ValueError(f"denoiser argument {name!r} differs between batched requests")
        return merged

    def preview_latents(self, pipe: Any, latents: torch.Tensor, request: ImageRequest) -> Any:
        """The packed tokens `(n, (h/2)*(w/2), c*4)` of the first image as `(c, h, w)`."""
        assert request.height is not None and request.width is not None
        if latents.ndim != 3:
            return None
        scale = pipe.vae_scale_factor * 2
        h, w = request.height // scale, request.width // scale
        patches = latents[0].T.reshape(-1, 2, 2, h, w)  # (c, 2, 2, h/2, w/2)
        return patches.permute(0, 3, 1, 4, 2).reshape(patches.shape[0], h * 2, w * 2)
