"""What a job costs: one rule for every kind, used when a job is charged and when the images
it did not deliver are given back.

An image of `/imagine`, a reroll or a variation costs one image of the allowance; an upscale
(one image at four times the pixels) costs `[images] upscale_cost`. A canvas job (Zoom Out,
Pan, Vary (Region), `/inpaint`) is charged by the pixels it makes: each image costs one
image per model's native area (`native`²) it covers, rounded up, so a zoom or a pan at the
model's area costs one and a picture inpainted at twice the area costs two. A job that posts
fewer images than it was charged for (moderation withheld some, or every one) keeps only the
price of what it posted.
"""

from __future__ import annotations

import math

from ..config import ImagesSettings
from ..ledger import JobKind, JobRecord
from .convert import CANVAS_KINDS

__all__ = ["area_units", "price", "refund"]


def area_units(width: int, height: int, native: int) -> int:
    """Native areas (`native`²) a `width`×`height` image covers, rounded up; at least one."""
    if native <= 0 or width <= 0 or height <= 0:
        return 1
    return max(1, math.ceil(width * height / (native * native)))


def price(
    kind: JobKind, images: int, settings: ImagesSettings, *, made: tuple[int, int, int] = (0, 0, 0)
) -> int:
    """Images of the allowance that `images` images of a job of `kind` cost; `made` is
    (width, height, the model's native size), which prices a canvas job's pixels."""
    if kind is JobKind.UPSCALE:
        return images * settings.upscale_cost
    if kind in CANVAS_KINDS:
        return images * area_units(*made)
    return images


def refund(job: JobRecord, posted: int, settings: ImagesSettings) -> int:
    """What to give back of a job that posted `posted` of its images: what it is charged
    less the price of what it posted (nothing when it posted all; never below nothing). A
    canvas job's images each cost what it was charged per image asked."""
    request = job.request
    if request.kind in CANVAS_KINDS:
        kept = posted * (request.image_count // max(1, request.images_asked))
    else:
        kept = price(request.kind, posted, settings)
    return max(0, request.image_count - kept)
