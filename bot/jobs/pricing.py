"""What a job costs: one rule for every kind, used when a job is charged and when the images
it did not deliver are given back.

An image of `/imagine`, a reroll or a variation costs one image of the allowance; an upscale
(one image at four times the pixels) costs `[images] upscale_cost`. A canvas job (Zoom Out,
Pan, Vary (Region), `/inpaint`) is charged by the pixels it makes: each image costs one
image per model's native area (`native`²) it covers, rounded up, so a zoom or a pan at the
model's area costs one and a picture inpainted at twice the area costs two. A job that posts
fewer images than it was charged for (moderation withheld some, or every one) keeps only the
price of what it posted.

`/imagine fix:` adds to each image the price of its fix by the same pixel rule (`fix_units`:
the "Only masked" inpaint at the model's area, one native area as a rule). It is reserved for
every image, and the final price is set when the result is about to be posted
(`delivered_price`), once it is known which images had something to fix: an image where
nothing was found is posted as made and costs what an image costs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from engine import EngineClient, GeneratedImage, InvalidRequest
from engine.derived import fix_size

from ..config import ImagesSettings
from ..ledger import JobKind, JobRecord
from .convert import CANVAS_KINDS

__all__ = ["area_units", "delivered_price", "fix_units", "price", "refund"]


def area_units(width: int, height: int, native: int) -> int:
    """Native areas (`native`²) a `width`×`height` image covers, rounded up; at least one."""
    if native <= 0 or width <= 0 or height <= 0:
        return 1
    return max(1, math.ceil(width * height / (native * native)))


def fix_units(engine: EngineClient, model: str, width: int, height: int) -> int:
    """What fixing one `width`×`height` image of `model` costs: the native areas its "Only
    masked" inpaint makes (`derived.fix_size`); one when the size or model is not known."""
    try:
        profile = engine.profile_of(model or None)
    except InvalidRequest:
        return 1
    native = profile.native_size
    if width <= 0 or height <= 0 or native <= 0:
        return 1
    size = fix_size(width, height, native, profile.multiple, engine.limits)
    return area_units(*size, native)


def price(
    kind: JobKind,
    images: int,
    settings: ImagesSettings,
    *,
    made: tuple[int, int, int] = (0, 0, 0),
    fix: int = 0,
) -> int:
    """Images of the allowance that `images` images of a job of `kind` cost; `made` is
    (width, height, the model's native size), which prices a canvas job's pixels; `fix`
    what fixing each image costs (`fix_units`; 0: no fix asked)."""
    if kind is JobKind.UPSCALE:
        return images * settings.upscale_cost + images * fix
    if kind in CANVAS_KINDS:
        return images * area_units(*made) + images * fix
    return images + images * fix


def delivered_price(
    job: JobRecord, posted: Sequence[GeneratedImage], settings: ImagesSettings, fix: int
) -> int:
    """The final price of a job with a fix (an `/imagine` or `/edit`, the jobs that take
    one) that posts `posted`: each image's price, and `fix` more for each one whose fix
    found something (`GeneratedImage.fixed`)."""
    fixed = sum(1 for image in posted if image.fixed)
    return price(job.request.kind, len(posted), settings) + fixed * fix


def refund(job: JobRecord, posted: int, settings: ImagesSettings) -> int:
    """What to give back of a job that posted `posted` of its images: what it is charged
    less the price of what it posted (nothing when it posted all; never below nothing). A
    canvas job's images each cost what it was charged per image asked. A job with a fix had
    its final price set before it was posted (`delivered_price`): nothing to give back."""
    request = job.request
    if request.fix:
        return 0
    if request.kind in CANVAS_KINDS:
        kept = posted * (request.image_count // max(1, request.images_asked))
    else:
        kept = price(request.kind, posted, settings)
    return max(0, request.image_count - kept)
