"""Upscale (subtle) and Upscale (creative): the GAN upscaler (`[upscale] model`) first.

The GAN runs when the button is pressed (on the engine's worker thread, between ticks), and
its picture, at the size the limits allow, becomes the job's picture, stored before the job
is queued like any image-to-image job's. Upscale (creative) then refines it by
image-to-image, as the plain Upscale refines a resized one. Upscale (subtle) is the GAN's
picture alone: its job has no denoising steps (stored as 0 steps), so its image is its
stored picture, ready at once (`ready_job`), and a restart delivers the same picture
again. Both are charged as an upscale, exactly once, like every job.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from engine import GeneratedImage, GenerationResult, ImageRequest, Job, Parameters
from engine.pngmeta import encode_png

from ..ledger import JobKind, JobRequest
from .convert import source_parameters

if TYPE_CHECKING:
    from PIL.Image import Image

    from engine import EngineClient

__all__ = ["GAN_FACTOR", "gan_input", "is_gan_alone", "ready_job", "upscaler_name"]

#: A GAN upscale enlarges 4x where the limits allow (ESRGANs are 4x), as the command line's.
GAN_FACTOR = 4.0


def upscaler_name(model: str) -> str:
    """How the PNG names the upscaler (`[upscale] model`'s file stem, as A1111 does)."""
    return Path(model).stem.removeprefix("builtin:")


def is_gan_alone(stored: JobRequest) -> bool:
    """An Upscale (subtle): an upscale with no denoising steps, its picture its image."""
    return stored.kind is JobKind.UPSCALE and stored.steps == 0


async def gan_input(engine: EngineClient, image: Image, request: ImageRequest) -> ImageRequest:
    """`request` (an upscale) starting from the GAN's picture of `image`, resized to the
    request's size (the limits'), its PNG naming the upscaler as A1111's hires fix does."""
    from PIL import Image as PILImage

    assert request.width is not None and request.height is not None
    big = await engine.gan_upscale(image)
    init = big.convert("RGB").resize((request.width, request.height), PILImage.Resampling.LANCZOS)
    extra = (*request.parameters, ("Hires upscaler", upscaler_name(engine.config.upscale_model)))
    return dataclasses.replace(request, init_image=init, parameters=extra)


def ready_job(
    job_id: int, stored: JobRequest, picture: Image, request: ImageRequest, *, upscaler: str
) -> Job:
    """The job of an Upscale (subtle) whose `picture` (the GAN's, stored) is its image: done
    at once, its PNG carrying the source's parameters and A1111's `Postprocess upscaler`."""
    import asyncio

    fields = Parameters(
        prompt=stored.prompt,
        negative_prompt=stored.negative_prompt,
        steps=0,
        sampler="",
        cfg_scale=stored.guidance,
        seed=stored.seed,
        width=picture.width,
        height=picture.height,
        model=stored.model,
        extra=(
            ("Postprocess upscaler", upscaler),
            *(field for field in source_parameters(stored) if field[0] == "Source"),
        ),
    )
    png = encode_png(picture, fields)
    job = Job(str(job_id), request, (), on_cancel=lambda _job: None)
    image = GeneratedImage(png, stored.seed, 0, picture.width, picture.height)
    result = GenerationResult(request, (image,), stored.model, "")
    asyncio.get_running_loop().call_soon(job.resolve, result, None)
    return job
