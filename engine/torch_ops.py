"""Torch helpers shared by the two ways of running requests: `runner.Runner` (one pipeline
call per batch) and `stepper.Stepper` (one UNet step per tick).

Both must make the same images from the same request, so seeding, the numbers check, the
safety check, PNG packing and previews are written once, here. Runs on the engine's worker
thread.

An image whose latents or pixels hold NaN or infinity (an overflow: fp16, an extreme prompt
weight, a broken LoRA) would come out black or as noise; `pictures` turns it into None and
`package_images` leaves it out, so it is never delivered, whatever caused it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .inpaint import blurred, inpaint_parameters, overlaid
from .loader import LoadedModel
from .pngmeta import Parameters, encode_png
from .preview import latents_to_preview
from .request import ImageRequest
from .result import GeneratedImage

__all__ = [
    "check_safety",
    "finite_rows",
    "package_images",
    "picture_hash",
    "pictures",
    "preview_png",
    "seeded_generators",
]


def seeded_generators(request: ImageRequest) -> list[torch.Generator]:
    """One CPU generator per image, seeded `seed + i`: same image on any device and in any batch."""
    return [torch.Generator("cpu").manual_seed(seed) for seed in request.seeds]


def preview_png(latents: torch.Tensor, family: str) -> bytes | None:
    """A fast PNG of one sample's latents `(4, h, w)`, or None for layouts it cannot read and
    for latents that are not finite (a black preview of an image that will not come)."""
    if not bool(torch.isfinite(latents).all()):
        return None
    image = latents_to_preview(latents, family)
    if image is None:
        return None
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def finite_rows(tensor: torch.Tensor) -> list[bool]:
    """Per image (the first axis): whether every number in it is finite."""
    return torch.isfinite(tensor.reshape(tensor.shape[0], -1)).all(dim=1).tolist()


def pictures(pixels: Any, latents_ok: Sequence[bool] | None = None) -> list[Any | None]:
    """PIL images from a pipeline's float pixels `(n, h, w, c)` in 0..1 (`output_type="np"`),
    made as diffusers' `numpy_to_pil` makes `output_type="pil"`; None in place of an image
    whose pixels, or latents (`latents_ok`, when known), are not all finite. PIL pictures
    (inpainting's "Only masked", pasted back by the pipeline) are checked by their latents."""
    from diffusers.image_processor import VaeImageProcessor
    from PIL import Image

    if len(pixels) and isinstance(pixels[0], Image.Image):
        fine = [True] * len(pixels) if latents_ok is None else list(latents_ok)
        return [image if ok else None for image, ok in zip(pixels, fine, strict=True)]
    arrays = np.asarray(pixels)
    ok = np.isfinite(arrays.reshape(len(arrays), -1)).all(axis=1)
    if latents_ok is not None:
        ok &= np.asarray(latents_ok, dtype=bool)
    return [
        VaeImageProcessor.numpy_to_pil(array)[0] if fine else None
        for array, fine in zip(arrays, ok, strict=True)
    ]


def check_safety(model: LoadedModel, images: Sequence[Any | None]) -> list[bool]:
    """The safety checker's verdict per image (all False without one; False for None, an
    image that is not delivered); images are not altered."""
    made = [im for im in images if im is not None]
    if model.checker is None or model.feature_extractor is None or not made:
        return [False] * len(images)
    inputs = model.feature_extractor(made, return_tensors="pt")
    pixel = inputs.pixel_values.to(device=model.device, dtype=model.checker.dtype)
    arrays = np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in made])
    _, flags = model.checker(images=arrays, clip_input=pixel)
    verdicts = iter(bool(f) for f in flags)
    return [False if im is None else next(verdicts) for im in images]


def picture_hash(picture: Any) -> str:
    """A short hash of a picture's pixels (as A1111 writes `Model hash`): which source an edit
    was made from, whatever the file was called."""
    import hashlib

    return hashlib.sha256(picture.convert("RGB").tobytes()).hexdigest()[:10]


def package_images(
    model: LoadedModel,
    request: ImageRequest,
    images: Sequence[Any | None],
    flags: Sequence[bool],
) -> list[GeneratedImage]:
    """PNGs carrying their parameters, one per seed of `request`, in seed order; an image that
    is None (not finite, see `pictures`) is left out, the others keep their `index`."""
    assert request.steps is not None and request.guidance is not None
    assert request.width is not None and request.height is not None
    made = []
    for n, (seed, image, flagged) in enumerate(zip(request.seeds, images, flags, strict=True)):
        if image is None:
            continue
        extra = list(request.parameters)
        if request.mask is not None:
            extra = inpaint_parameters(request.mask_blur, request.inpaint_padding) + extra
        if request.inpaint == "whole":  # "Only masked" was pasted back by the pipeline
            assert request.init_image is not None and request.mask is not None
            mask = blurred(request.mask, request.mask_blur or 0)
            image = overlaid(request.init_image, image, mask)
        if model.profile.hash:
            extra.insert(0, ("Model hash", model.profile.hash))
        if request.references:  # which pictures it edits, whatever their names were
            extra.append(("Source hash", " ".join(map(picture_hash, request.references))))
        if request.fast and model.cache is not None:  # the same seed repeats it only so
            extra.append(("Step cache", model.cache.describe()))
        params = Parameters(
            # A1111 keeps `<lora:name:weight>` in the prompt: another tool (and this one,
            # reading the PNG back) applies the same LoRAs.
            prompt=request.tagged_prompt,
            negative_prompt=request.negative_prompt,
            steps=request.steps,
            sampler=model.profile.sampler,
            cfg_scale=request.guidance,
            seed=seed,
            width=request.width,
            height=request.height,
            model=model.profile.name,
            denoising_strength=request.image_strength,
            extra=tuple(extra),
        )
        made.append(
            GeneratedImage(
                png=encode_png(image, params),
                seed=seed,
                index=n,
                width=image.width,  # "Only masked" keeps the picture's size
                height=image.height,
                flagged=flagged,
            )
        )
    return made
