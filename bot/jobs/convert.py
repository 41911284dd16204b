"""Every mapping between the job's shapes, in one place.

A job is seen as command options (`ImagineOptions`), an engine request (`ImageRequest`) and
a ledger request (`JobRequest`: what is stored; a `JobRecord` holds it as `record.request`
beside the ledger's own fields). Fields with the same meaning are copied here and nowhere
else, so a new option is added in one module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from engine import MAX_SEED, UPSCALE_FACTOR, ImageRequest, Parameters
from engine.derived import FIX_PADDING

from ..ledger import JobKind, JobRequest
from ..services.options import ImagineOptions

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = [
    "CANVAS_KINDS",
    "Origin",
    "engine_request",
    "ledger_request",
    "reroll_options",
    "resumed_request",
    "source_of",
    "source_parameters",
]


#: Jobs that inpaint a canvas with a mask the bot made or was given (stored beside the picture).
CANVAS_KINDS = frozenset({JobKind.ZOOM, JobKind.PAN, JobKind.REGION, JobKind.FIX})


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


def engine_request(
    options: ImagineOptions,
    *,
    negative: str,
    user: str,
    picture: Image | None = None,
    references: Sequence[Image] = (),
) -> ImageRequest:
    """The engine request for `options`; `negative` is the moderated negative prompt,
    `picture` the image an image-to-image request starts from, and `references` the pictures
    an edit by instruction changes. Sizes (a shape, an aspect ratio) are left for the engine
    to resolve for the request's model."""
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
        init_image=picture,
        references=tuple(references),
        aspect=options.aspect,
        shape=options.shape,
        strength=options.strength,
        model=options.model,
        fast=options.fast,
        fix=options.fix,
    )


def ledger_request(
    origin: Origin,
    request: ImageRequest,
    *,
    model: str,
    scheduler: str,
    charged: int,
    kind: JobKind = JobKind.IMAGINE,
    reroll_of: int | None = None,
    source: tuple[int, int] | None = None,
) -> JobRequest:
    """What the ledger stores for `request` (unresolved fields are stored as 0), charged
    `charged` images of the allowance; `source` is the (job id, image index) an upscale or
    variation starts from. The prompt keeps its LoRAs as `<lora:name:weight>` tags, so a
    restart or a reroll applies them."""
    return JobRequest(
        guild_id=origin.guild_id,
        channel_id=origin.channel_id,
        user_id=origin.user_id,
        application_id=origin.application_id,
        interaction_id=origin.interaction_id,
        interaction_token=origin.token,
        prompt=request.tagged_prompt,
        negative_prompt=request.negative_prompt,
        seed=request.seed if request.seed is not None else 0,
        model=model,
        scheduler=scheduler,
        steps=request.steps or 0,
        guidance=request.guidance if request.guidance is not None else 0.0,
        width=request.width or 0,
        height=request.height or 0,
        image_count=charged,
        images_asked=request.count,
        reroll_of=reroll_of,
        kind=kind,
        source_job_id=None if source is None else source[0],
        source_index=None if source is None else source[1],
        strength=request.image_strength,
        fix=",".join(request.fix),
    )


def resumed_request(
    stored: JobRequest,
    picture: Image | None = None,
    mask: tuple[Image, tuple[tuple[str, str], ...]] | None = None,
    references: Sequence[Image] = (),
) -> ImageRequest:
    """The engine request that makes a stored job's images again (same seed: same images);
    an image-to-image job needs the `picture` it started from, an inpainting job (a
    `CANVAS_KINDS` one) its `mask` and the PNG fields stored with it (`ImageStore.load_mask`),
    an edit its `references`."""
    options = replace(reroll_options(stored), seed=stored.seed)
    user = fairness_key(stored.guild_id, stored.user_id)
    if stored.kind is JobKind.EDIT:
        request = engine_request(
            options, negative=stored.negative_prompt, user=user, references=references
        )
        return replace(request, parameters=source_parameters(stored))
    if stored.strength is None:
        return engine_request(options, negative=stored.negative_prompt, user=user)
    request = engine_request(options, negative=stored.negative_prompt, user=user, picture=picture)
    if mask is not None:  # a face fix inpaints "Only masked", as `fix_request` asks
        padding = FIX_PADDING if stored.kind is JobKind.FIX else None
        return replace(request, mask=mask[0], parameters=mask[1], inpaint_padding=padding)
    return replace(request, parameters=source_parameters(stored))


def source_of(stored: JobRequest, index: int) -> Parameters:
    """What image `index` of a stored job was made with, for an upscale or variation of it.

    From the ledger, not the PNG's text read back: a prompt that itself reads like a PNG
    field (`Negative prompt: ...`) stays the prompt, and LoRA tags are the stored ones.
    """
    return Parameters(
        prompt=stored.prompt,
        negative_prompt=stored.negative_prompt,
        steps=stored.steps,
        sampler=stored.scheduler,
        cfg_scale=stored.guidance,
        seed=(stored.seed + index) % (MAX_SEED + 1),  # the engine's seeds: seed + i
        width=stored.width,
        height=stored.height,
        model=stored.model,
        denoising_strength=stored.strength,
    )


def source_parameters(stored: JobRequest) -> tuple[tuple[str, str], ...]:
    """The PNG fields naming where an upscale, variation or edit of a result came from (as
    first written)."""
    if stored.source_job_id is None or stored.source_index is None:
        return ()
    source = ("Source", f"job {stored.source_job_id}, image {stored.source_index + 1}")
    if stored.kind is JobKind.UPSCALE:
        return (("Hires upscale", f"{UPSCALE_FACTOR:g}"), source)
    return (source,)


def reroll_options(stored: JobRequest) -> ImagineOptions:
    """The same options as a stored job, with a new seed."""
    return ImagineOptions(
        prompt=stored.prompt,
        negative=stored.negative_prompt,
        steps=stored.steps,
        guidance=stored.guidance,
        width=stored.width,
        height=stored.height,
        count=stored.images_asked,  # not `image_count`: that is less after a refund
        strength=stored.strength,  # an image job's reroll starts from the same picture
        model=stored.model or None,
        fix=tuple(filter(None, stored.fix.split(","))),  # fixed again, as asked
    )
