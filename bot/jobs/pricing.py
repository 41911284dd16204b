"""What a job costs: one rule for every kind, used when a job is charged and when the images
it did not deliver are given back.

An image of `/imagine`, a reroll or a variation costs one image of the allowance; an upscale
(one image at four times the pixels) costs `[images] upscale_cost`. A job that posts fewer
images than it was charged for (moderation withheld some, or every one) keeps only the price
of what it posted.
"""

from __future__ import annotations

from ..config import ImagesSettings
from ..ledger import JobKind, JobRecord

__all__ = ["price", "refund"]


def price(kind: JobKind, images: int, settings: ImagesSettings) -> int:
    """Images of the allowance that `images` images of a job of `kind` cost."""
    return images * (settings.upscale_cost if kind is JobKind.UPSCALE else 1)


def refund(job: JobRecord, posted: int, settings: ImagesSettings) -> int:
    """What to give back of a job that posted `posted` of its images: what it is charged
    less the price of what it posted (nothing when it posted all; never below nothing)."""
    return max(0, job.request.image_count - price(job.request.kind, posted, settings))
