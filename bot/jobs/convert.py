"""Every mapping between the job's shapes, in one place.

A job is seen as command options (`ImagineOptions`), an engine request (`ImageRequest`), a
ledger request (`JobRequest`, what is stored) and a ledger record (`JobRecord`, what was
stored). Fields with the same meaning are copied here and nowhere else, so a new option is
added in one module.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from engine import MAX_SEED, UPSCALE_FACTOR, ImageRequest, Parameters, lora_tags

from ..ledger import JobKind, JobRecord, JobRequest
from ..options import ImagineOptions

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = [
    "Origin",
    "engine_request",
    "ledger_request",
    "reroll_options",
    "resumed_request",
    "source_of",
    "source_parameters",
]


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a request came from and where its answer goes (no discord object inside)."""

    guild_id: int  # 0 for direct messages
    channel_id: int
    parent_channel_id: int | None  # a thread's parent channel
    user_id: int
    application_id: int
    interaction_id: int
    token: str

    @property
    def fairness_key(self) -> str:
        return fairness_key(self.guild_id, self.user_id)


def fairness_key(guild_id: int, user_id: int) -> str:
    """The engine's `user`: requests are interleaved between these keys."""
    return f"{guild_id}:{user_id}"


def engine_request(options: ImagineOptions, *, negative: str, user: str) -> ImageRequest:
    """The engine request for `options`; `negative` is the moderated negative prompt. Sizes
    (a shape, an aspect ratio) are left for the engine to resolve for the request's model."""
    return ImageRequest(
        prompt=options.prompt,
        negative_prompt=negative,
        seed=options.seed,
        steps=options.steps,
        guidance=options.guidance,
        width=options.width,
        height=options.height,
        count=options.count,
        user=user,
        aspect=options.aspect,
        shape=options.shape,
        strength=options.strength,
        model=options.model,
        fast=options.fast,
    )


def ledger_request(
    origin: Origin,
    request: ImageRequest,
    *,
    model: str,
    scheduler: str,
    reroll_of: int | None,
) -> JobRequest:
    """What the ledger stores for `request` (unresolved fields are stored as 0). The prompt
    keeps its LoRAs as `<lora:name:weight>` tags, so a restart or a reroll applies them."""
    return JobRequest(
        guild_id=origin.guild_id,
        channel_id=origin.channel_id,
        user_id=origin.user_id,
        application_id=origin.application_id,
        interaction_id=origin.interaction_id,
        interaction_token=origin.token,
        prompt=" ".join(filter(None, (request.prompt, lora_tags(request.loras)))),
        negative_prompt=request.negative_prompt,
        seed=request.seed if request.seed is not None else 0,
        model=model,
        scheduler=scheduler,
        steps=request.steps or 0,
        guidance=request.guidance if request.guidance is not None else 0.0,
        width=request.width or 0,
        height=request.height or 0,
        image_count=request.count,
        images_asked=request.count,
        reroll_of=reroll_of,
        strength=request.strength if request.init_image is not None else None,
    )


def resumed_request(record: JobRecord, picture: Image | None = None) -> ImageRequest:
    """The engine request that makes a stored job's images again (same seed: same images);
    an image-to-image job needs the `picture` it started from."""
    options = replace(reroll_options(record), seed=record.seed)
    user = fairness_key(record.guild_id, record.user_id)
    request = engine_request(options, negative=record.negative_prompt, user=user)
    if record.strength is None:
        return request
    return replace(
        request, init_image=picture, strength=record.strength, parameters=source_parameters(record)
    )


def source_of(record: JobRecord, index: int) -> Parameters:
    """What image `index` of a stored job was made with, for an upscale or variation of it.

    From the ledger, not the PNG's text read back: a prompt that itself reads like a PNG
    field (`Negative prompt: ...`) stays the prompt, and LoRA tags are the stored ones.
    """
    return Parameters(
        prompt=record.prompt,
        negative_prompt=record.negative_prompt,
        steps=record.steps,
        sampler=record.scheduler,
        cfg_scale=record.guidance,
        seed=(record.seed + index) % (MAX_SEED + 1),  # the engine's seeds: seed + i
        width=record.width,
        height=record.height,
        model=record.model,
        denoising_strength=record.strength,
    )


def source_parameters(record: JobRecord) -> tuple[tuple[str, str], ...]:
    """The PNG fields naming where an upscale or variation came from (as first written)."""
    if record.source_job_id is None or record.source_index is None:
        return ()
    source = ("Source", f"job {record.source_job_id}, image {record.source_index + 1}")
    if record.kind is JobKind.UPSCALE:
        return (("Hires upscale", f"{UPSCALE_FACTOR:g}"), source)
    return (source,)


def reroll_options(record: JobRecord) -> ImagineOptions:
    """The same options as a stored job, with a new seed."""
    return ImagineOptions(
        prompt=record.prompt,
        negative=record.negative_prompt,
        steps=record.steps,
        guidance=record.guidance,
        width=record.width,
        height=record.height,
        count=record.images_asked,  # not `image_count`: that is less after a refund
        strength=record.strength,  # an image job's reroll starts from the same picture
        model=record.model or None,
    )
