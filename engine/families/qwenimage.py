"""Qwen-Image: an MMDiT over packed 2x2 latents whose prompts are read by Qwen2.5-VL.

Guidance. Qwen-Image is not guidance-distilled: its pipeline's `guidance_scale` is ignored
(it is there for future distilled models) and guidance is true classifier-free guidance,
`true_cfg_scale`, which applies only when a negative prompt is given. So a request's
`guidance` is sent as `true_cfg_scale`, always with a negative prompt: the user's, else one
space, as the model card recommends when there is none (`negative_prompt = " "`, with
`true_cfg_scale=4.0` and 50 steps: the defaults here). Guidance over 1 calls the transformer
twice a step (the prompt, then the negative prompt), in one tick; guidance 1 or less (the
few-step "Lightning" LoRAs) calls it once and reads no negative prompt.

Batching. The transformer takes per-sample timesteps, and text of any length with a mask
(`encoder_hidden_states_mask`): the text tokens' rotary positions start after the image's
and do not depend on the text's length, and masked tokens are left out of the attention,
so a prompt padded to a longer one's length with the mask set gives the image tokens the
same attention and the same output. `merge` pads the calls of one tick to the longest text
and sets the masks (the pipeline passes no mask when none of its prompts is padded), so
requests whose prompts tokenize to different lengths share one forward; the batch key needs
no text length. `img_shapes` (one entry per sample) depend only on the size, which the
group shares.

Qwen-Image-Edit (`QwenImageEditPlusPipeline`: 2509 and later, up to three pictures; the
first Qwen-Image-Edit's own `QwenImageEditPipeline` is not served) edits by instruction: the
pictures are read twice, by Qwen2.5-VL beside the instruction (at 384² pixels) and as VAE
latents appended to the image tokens (at 1024² pixels, whatever the model's native size: the
pipeline's constants). The transformer reads the `img_shapes` of the first sample only, so
edits share a forward only with edits of the same picture sizes (the batch key has them);
the text, pictures' tokens included, is padded as above. The pipeline takes one prompt per
call (`num_images_per_prompt` for several images), so batch scheduling runs each request as
its own call with merged denoiser calls. Text-to-image on an edit model runs
`QwenImagePipeline` on its modules.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType
from typing import Any

import torch

from ..request import ImageRequest
from .base import DenoiserCall, Family, FamilyDefaults
from .flux import packed_preview

__all__ = ["QwenImage", "QwenImageEdit"]

#: The negative prompt of a request without one: the model card's (one space).
NO_NEGATIVE = " "


class QwenImage(Family):
    """Qwen-Image: `guidance` is `true_cfg_scale`, always with a negative prompt (the
    user's, else one space); texts of any length share a forward (see the module doc)."""

    name = "qwenimage"
    label = "Qwen-Image"
    pipelines = ("QwenImagePipeline",)
    denoiser = "transformer"
    positional = (
        "hidden_states",
        "encoder_hidden_states",
        "encoder_hidden_states_mask",
        "timestep",
        "img_shapes",
        "guidance",
        "attention_kwargs",
    )
    shared = frozenset({"attention_kwargs"})
    negative_prompt = True
    img2img = MappingProxyType({"QwenImagePipeline": "QwenImageImg2ImgPipeline"})
    inpaint = MappingProxyType({"QwenImagePipeline": "QwenImageInpaintPipeline"})
    multiple = 16  # 8x latents, packed 2x2

    def defaults(self, pipe: Any, source: str) -> FamilyDefaults:
        return self.stock_defaults(pipe, source, steps=50, guidance=4.0)

    guidance_argument = "true_cfg_scale"

    def texts(
        self, requests: Sequence[ImageRequest], embedded: Sequence[Any] | None
    ) -> dict[str, Any]:
        """The prompts; a negative one (one space when none is given, as the model card does)
        only under guidance, where the stock pipeline turns true CFG on by it."""
        cfg = (requests[0].guidance or 0.0) > 1.0
        negatives = [text or NO_NEGATIVE for text in self.each_image(requests, "negative_prompt")]
        return {
            "prompt": self.each_image(requests, "prompt"),
            "negative_prompt": negatives if cfg else None,
        }

    def merge(self, calls: Sequence[DenoiserCall]) -> DenoiserCall:
        """One call for every sample, the text of each padded to the longest (masked)."""
        named = [{**dict(zip(self.positional, c.args, strict=False)), **c.kwargs} for c in calls]
        lengths = [int(n["encoder_hidden_states"].shape[1]) for n in named]
        longest = max(lengths)
        if any(n.get("encoder_hidden_states_mask") is not None for n in named) or any(
            length != longest for length in lengths
        ):
            named = [_padded(n, longest) for n in named]
        return super().merge([DenoiserCall((), n) for n in named])

    def preview_latents(self, pipe: Any, latents: torch.Tensor, request: ImageRequest) -> Any:
        return packed_preview(pipe, latents, request)


class QwenImageEdit(QwenImage):
    """Qwen-Image-Edit 2509: edits by instruction with one to three pictures (see the module doc);
    text-to-image through `QwenImagePipeline` on the same modules."""

    name = "qwenimage-edit"
    label = "Qwen-Image-Edit"
    pipelines = ("QwenImageEditPlusPipeline",)
    edits = MappingProxyType({"QwenImageEditPlusPipeline": 3})
    text2image = MappingProxyType({"QwenImageEditPlusPipeline": "QwenImagePipeline"})
    img2img = MappingProxyType({"QwenImageEditPlusPipeline": "QwenImageImg2ImgPipeline"})
    one_edit_per_call = True

    def defaults(self, pipe: Any, source: str) -> FamilyDefaults:
        """The model card's 40 steps at `true_cfg_scale` 4; sizes in multiples of its latents'
        2x2 patches (16 pixels, 32 for the tiny builtin's 16x VAE)."""
        native = pipe.default_sample_size * pipe.vae_scale_factor
        steps = 40
        if source.startswith("builtin:"):
            native, steps = 64, 4
        return FamilyDefaults(steps, 4.0, native, pipe.vae_scale_factor * 2)

    def reference_fit(self, pipe: Any, native: int) -> tuple[tuple[tuple[int, int], ...], int, int]:
        """`calculate_dimensions(VAE_IMAGE_SIZE, aspect)`: 1024² pixels in multiples of 32."""
        return (), 1024 * 1024, 32

    def finish_kwargs(
        self, pipe: Any, requests: Sequence[ImageRequest], kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        """An edit is one prompt with `num_images_per_prompt` (the pipeline refuses a list of
        several); its generators are still one per image."""
        if requests[0].references:
            kwargs["prompt"] = kwargs["prompt"][0]
            if kwargs.get("negative_prompt") is not None:
                kwargs["negative_prompt"] = kwargs["negative_prompt"][0]
            kwargs["num_images_per_prompt"] = requests[0].count
        return kwargs


def _padded(named: dict[str, Any], length: int) -> dict[str, Any]:
    """A call's arguments with its text zero-padded to `length` tokens and its mask set
    (1 for its own tokens, 0 for the padding)."""
    text: torch.Tensor = named["encoder_hidden_states"]
    rows, own = int(text.shape[0]), int(text.shape[1])
    mask = named.get("encoder_hidden_states_mask")
    if mask is None:
        mask = torch.ones(rows, own, dtype=torch.long, device=text.device)
    mask = mask.to(torch.long)
    if own < length:
        text = torch.cat([text, text.new_zeros(rows, length - own, text.shape[2])], dim=1)
        mask = torch.cat([mask, mask.new_zeros(rows, length - own)], dim=1)
    return {**named, "encoder_hidden_states": text, "encoder_hidden_states_mask": mask}
