"""FLUX.1 (schnell, dev) and Chroma: rectified-flow transformers over packed 2x2 latents.

FLUX.1 reads its prompt through CLIP (pooled) and T5 (the sequence), A1111 weights scaling
T5's rows (`weighting_t5`); dev has a distilled guidance embedding (its guidance is a
per-sample input, so requests of any guidance share a call), schnell has none. Neither reads
a negative prompt. Chroma reads T5 only, with an attention mask, weighted the same way, and
uses true classifier-free guidance (two transformer calls a step when guidance is over 1).
The transformer takes one timestep per sample; the positional ids of the image and text
tokens are shared, and depend only on the size, so requests of one size share a call. The
scheduler's resolution-dependent shift is the stock pipeline's own, per request.

FLUX.1 Kontext (`FluxKontextPipeline`) is FLUX.1 dev that edits by instruction: the picture's
latents are appended to the image tokens of every transformer call (the noise stays pure;
no strength), with positional ids of their own, so only edits of one picture size share a
call (the batch key has the sizes) and a text-to-image request on the same model is a group
of its own. Its pipeline keeps only the aspect ratio of the width and height it is given,
making `max_area` pixels (1024² by default) whatever size is asked, and resizes the picture
to the preferred resolution nearest its aspect ratio; so every call passes
`max_area = width x height`, and validation fits the picture to the preferred resolutions
(scaled to the model's native size) so the pipeline's own resizing is a no-op
(`_auto_resize=False`). One picture per prompt, so one stock call holds several requests'
edits (batch scheduling).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType
from typing import Any

import torch

from .. import weighting_t5
from ..request import ImageRequest
from .base import Family, FamilyDefaults, call_default

__all__ = ["Chroma", "Flux", "FluxFill", "FluxKontext", "packed_preview"]


def unpack(latents: torch.Tensor, height: int, width: int, scale: int) -> torch.Tensor:
    """Packed latents `(n, (h/2)*(w/2), c*4)` as `(n, c, h, w)` (FluxPipeline's layout)."""
    n, _, channels = latents.shape
    h, w = 2 * (height // (scale * 2)), 2 * (width // (scale * 2))
    latents = latents.view(n, h // 2, w // 2, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return latents.reshape(n, channels // 4, h, w)


def packed_preview(pipe: Any, latents: torch.Tensor, request: ImageRequest) -> Any:
    """The first image's packed latents as `(c, h, w)`, for a progress preview (None when
    they are not packed): FLUX.1's and Qwen-Image's `Family.preview_latents`."""
    assert request.height is not None and request.width is not None
    if latents.ndim != 3:
        return None
    return unpack(latents[:1], request.height, request.width, pipe.vae_scale_factor)[0]


class Flux(Family):
    name = "flux"
    label = "FLUX.1"
    pipelines = ("FluxPipeline",)
    denoiser = "transformer"
    shared = frozenset({"txt_ids", "img_ids", "joint_attention_kwargs"})
    negative_prompt = False
    img2img = MappingProxyType({"FluxPipeline": "FluxImg2ImgPipeline"})
    inpaint = MappingProxyType({"FluxPipeline": "FluxInpaintPipeline"})
    multiple = 16  # 8x latents, packed 2x2
    weighted = True

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
        """T5's rows scaled by their weights, CLIP's pooled output as stock."""
        length = call_default(pipe, "max_sequence_length", 512)
        return weighting_t5.encode_flux(pipe, prompt, device=device, count=count, length=length)

    def texts(
        self, requests: Sequence[ImageRequest], embedded: Sequence[Any] | None
    ) -> dict[str, Any]:
        """Plain prompts (the stock path), or every request's weighted embeddings."""
        if embedded is None:
            return super().texts(requests, embedded)
        return {
            "prompt_embeds": torch.cat([e.cond for e in embedded]),
            "pooled_prompt_embeds": torch.cat([e.pooled for e in embedded]),
        }

    def defaults(self, pipe: Any, source: str) -> FamilyDefaults:
        native = pipe.default_sample_size * pipe.vae_scale_factor
        if source.startswith("builtin:"):
            native = 64
        if getattr(pipe.transformer.config, "guidance_embeds", False):  # dev
            steps = call_default(pipe, "num_inference_steps", 28)
            guidance = float(call_default(pipe, "guidance_scale", 3.5))
        else:  # schnell: four steps, no guidance at all
            steps, guidance = 4, 0.0
        if source.startswith("builtin:"):
            steps = 4
        return FamilyDefaults(steps, guidance, native, self.multiple)

    def preview_latents(self, pipe: Any, latents: torch.Tensor, request: ImageRequest) -> Any:
        return packed_preview(pipe, latents, request)


class Chroma(Flux):
    name = "chroma"
    label = "Chroma"
    pipelines = ("ChromaPipeline",)
    negative_prompt = True
    img2img = MappingProxyType({"ChromaPipeline": "ChromaImg2ImgPipeline"})
    # `ChromaInpaintPipeline` reads `guidance_embeds` from a config Chroma's transformer does
    # not have (diffusers 0.42): it fails on every Chroma model, so Chroma does not inpaint.
    inpaint = MappingProxyType({})

    def defaults(self, pipe: Any, source: str) -> FamilyDefaults:
        return self.stock_defaults(pipe, source, steps=35, guidance=5.0)

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
        """T5's rows scaled by their weights, with the stock attention masks."""
        length = call_default(pipe, "max_sequence_length", 512)
        return weighting_t5.encode_chroma(
            pipe, prompt, negative, device=device, count=count, cfg=cfg, length=length
        )

    def texts(
        self, requests: Sequence[ImageRequest], embedded: Sequence[Any] | None
    ) -> dict[str, Any]:
        """Plain prompts (the stock path), or every request's weighted embeddings and masks
        (the negative ones where guidance is over 1, as the stock call reads them)."""
        if embedded is None:
            return Family.texts(self, requests, embedded)
        out = {
            "prompt_embeds": torch.cat([e.cond for e in embedded]),
            "prompt_attention_mask": torch.cat([e.mask for e in embedded]),
        }
        if (requests[0].guidance or 0.0) > 1.0:
            out["negative_prompt_embeds"] = torch.cat([e.uncond for e in embedded])
            out["negative_prompt_attention_mask"] = torch.cat([e.negative_mask for e in embedded])
        return out


#: FluxKontextPipeline's preferred resolutions (its `PREFERRED_KONTEXT_RESOLUTIONS`), for a
#: native size of 1024.
KONTEXT_RESOLUTIONS = (
    (672, 1568),
    (688, 1504),
    (720, 1456),
    (752, 1392),
    (800, 1328),
    (832, 1248),
    (880, 1184),
    (944, 1104),
    (1024, 1024),
    (1104, 944),
    (1184, 880),
    (1248, 832),
    (1328, 800),
    (1392, 752),
    (1456, 720),
    (1504, 688),
    (1568, 672),
)


class FluxKontext(Flux):
    """FLUX.1 Kontext: FLUX.1 dev that edits by instruction (see the module doc)."""

    name = "flux-kontext"
    label = "FLUX.1 Kontext"
    pipelines = ("FluxKontextPipeline",)
    img2img = MappingProxyType({"FluxKontextPipeline": "FluxImg2ImgPipeline"})
    edits = MappingProxyType({"FluxKontextPipeline": 1})

    def defaults(self, pipe: Any, source: str) -> FamilyDefaults:
        """The model card's 28 steps at guidance 2.5."""
        native = pipe.default_sample_size * pipe.vae_scale_factor
        steps = call_default(pipe, "num_inference_steps", 28)
        if source.startswith("builtin:"):
            native, steps = 64, 4
        return FamilyDefaults(steps, 2.5, native, self.multiple)

    def reference_fit(self, pipe: Any, native: int) -> tuple[tuple[tuple[int, int], ...], int, int]:
        """The preferred resolutions, scaled to the native size (themselves at 1024)."""
        m = self.multiple
        sizes = {
            (max(m, w * native // 1024 // m * m), max(m, h * native // 1024 // m * m))
            for w, h in KONTEXT_RESOLUTIONS
        }
        return tuple(sorted(sizes)), 0, m

    def finish_kwargs(
        self, pipe: Any, requests: Sequence[ImageRequest], kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        if type(pipe).__name__ in self.edits:  # the Kontext pipeline, not image-to-image
            first = requests[0]
            assert first.width is not None and first.height is not None
            kwargs |= {"max_area": first.width * first.height, "_auto_resize": False}
        return kwargs

    def edit_kwargs(self, pipe: Any, requests: Sequence[ImageRequest]) -> dict[str, Any]:
        """One picture per image, so several requests' edits share a call."""
        return {"image": [r.references[0] for r in requests for _ in range(r.count)]}


class FluxFill(Flux):
    """FLUX.1 Fill: FLUX.1 dev whose transformer reads the mask and the masked picture beside
    the latents (384 input channels), so it only inpaints, through `FluxFillPipeline` (its
    model folder names that class). Its denoiser calls are FLUX.1's, merged the same way."""

    name = "flux-fill"
    label = "FLUX.1 Fill"
    pipelines = ("FluxFillPipeline",)
    img2img = MappingProxyType({})
    inpaint = MappingProxyType({"FluxFillPipeline": "FluxFillPipeline"})

    def defaults(self, pipe: Any, source: str) -> FamilyDefaults:
        """The stock call's 50 steps at guidance 30 (the model card's)."""
        return self.stock_defaults(pipe, source, steps=50, guidance=30.0)
