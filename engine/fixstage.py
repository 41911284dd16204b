"""`/imagine fix:` as one job of two stages: the images are made, then the faces (hands)
the detector finds in each are inpainted, and only then does the job end, with the fixed
images as its one result.

    make the images (a request like any other) → detect in each (worker thread, between
    ticks) → one "Only masked" inpaint per face (hand) found, as ADetailer does: its own
    crop with padding at the model's area (`derived.fix_request` of its box), queued like any
    other request, so they batch together and with everyone's work → each image with its
    fixed areas pasted back (`canvas.merge_fixes`) → the result

The caller holds one `Job` (`FixingJob`) for both stages: one submit, one result, one cancel,
so a front end reserves, charges and delivers it once, as any job; its progress is the
stages' (steps counted on). Every stage is seeded from the request (an image's fix from its
own seed), so running the request again (a restart, a lost replica) makes the same fixed
images. An image where nothing is found is delivered as it was made (`GeneratedImage.fixed`
empty): nothing is refused mid-job.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from .canvas import merge_fixes
from .client import Checked
from .config import Limits
from .derived import FIX_PADDING, FIX_STRENGTH, fix_request
from .errors import Cancelled, EngineError, GenerationFailed, ShuttingDown
from .fixing import fix_fields
from .inpaint import DEFAULT_MASK_BLUR
from .job import Job, JobState
from .pngmeta import Parameters, encode_with_fields
from .request import ImageRequest
from .result import GeneratedImage, GenerationResult

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["FixTools", "FixingJob", "start_fixing"]

log = logging.getLogger(__name__)

Box = tuple[int, int, int, int]


@dataclass(frozen=True, slots=True)
class FixTools:
    """What the fix stage uses of its engine: `check` a request, `queue` a later stage of an
    admitted job (a full queue takes it), `detect` boxes of a target in a picture."""

    check: Callable[[ImageRequest], Awaitable[Checked]]
    queue: Callable[[Checked, str], Job]
    detect: Callable[[Image, str], Awaitable[list[Box]]]
    limits: Limits
    models: Collection[str]
    detectors: Mapping[str, str]  # target -> detector (`EngineConfig.fix_detectors`)
    threshold: float
    closing: Callable[[], bool]  # the engine is stopping: a stage's failure is `ShuttingDown`


class FixingJob(Job):
    """The job a caller holds for a request with `fix`: its stages' progress and previews,
    one result; cancelling it cancels the stage running."""

    def __init__(self, job_id: str, checked: Checked) -> None:
        super().__init__(job_id, checked.request, checked.warnings, _cancel_stages)
        self.stages: list[Job] = []
        self.task: asyncio.Task[None] | None = None

    def request_preview(self) -> None:
        super().request_preview()
        for stage in self.stages:
            if not stage.done():
                stage.request_preview()


def _cancel_stages(job: Job) -> None:
    assert isinstance(job, FixingJob)
    for stage in job.stages:
        stage.cancel()
    job.resolve(None, Cancelled())
    if job.task is not None:
        job.task.cancel()


def start_fixing(tools: FixTools, checked: Checked, made: Job) -> Job:
    """The job of `checked` (a request with `fix`) whose images `made` is making (queued
    by the caller, who saw `Busy` at once): it ends once they are fixed."""
    job = FixingJob(made.id, checked)
    job.stages.append(made)
    job.task = asyncio.create_task(_run(tools, job, made), name=f"imagine-fix-{made.id}")
    return job


def _fix_steps(request: ImageRequest) -> int:
    """About the denoising steps an image's fix runs (`derived.fix_request`'s steps)."""
    return int(max(request.steps or 1, round(1 / FIX_STRENGTH + 0.5)) * FIX_STRENGTH)


async def _run(tools: FixTools, job: FixingJob, made: Job) -> None:
    try:
        extra = _fix_steps(job.request)
        result = await _follow(job, made, done=0, extra=extra)
        job.resolve(await _fixed(tools, job, result), None)
    except asyncio.CancelledError:
        job.resolve(None, ShuttingDown() if tools.closing() else Cancelled())
        raise
    except Exception as exc:
        job.resolve(None, _stage_error(tools, job, exc))
    finally:
        for stage in job.stages:
            if not stage.done():
                stage.cancel()


def _stage_error(tools: FixTools, job: FixingJob, exc: Exception) -> EngineError:
    """What ends the job when a stage raised `exc`: `ShuttingDown` while the engine stops
    (a check or detection may fail as its threads stop; the job runs again after a
    restart), else the stage's own error, or a failure of this job alone."""
    if tools.closing() and not isinstance(exc, Cancelled):
        return ShuttingDown()
    if isinstance(exc, EngineError):
        return exc
    log.error("job %s: fixing failed: %r", job.id, exc, exc_info=exc)  # a bug here
    return GenerationFailed(f"fixing the images failed: {exc}", exc)


async def _follow(job: FixingJob, stage: Job, *, done: int, extra: int) -> GenerationResult:
    """`stage`'s progress shown as the job's (its steps after `done` of `done + ... + extra`),
    then its result."""
    async for progress in stage.updates():
        if job.done():
            break
        if stage.started_at is not None and job.started_at is None:
            job.started_at = stage.started_at
        running = progress.state is not JobState.QUEUED or done > 0
        job.update_progress(
            state=JobState.RUNNING if running else JobState.QUEUED,
            position=None if running else progress.position,
            step=done + progress.step,
            total_steps=done + progress.total_steps + extra,
            preview=progress.preview,
            loading=progress.loading,
        )
    return await stage.result()


async def _fixed(tools: FixTools, job: FixingJob, made: GenerationResult) -> GenerationResult:
    """`made`'s images, each fixed where its targets are found, as one result."""
    request = job.request
    fixes: list[tuple[GeneratedImage, Image, dict[str, int], list[Job]]] = []
    for image in made.images:
        picture = await asyncio.to_thread(_decoded, image.png)
        found: dict[str, int] = {}
        boxes: list[Box] = []
        for target in request.fix:
            seen = await tools.detect(picture, target)
            found[target] = len(seen)
            boxes += seen
        if not boxes:
            log.info("job %s: image %d has no %s to fix", job.id, image.index, request.fix)
            continue
        source = Parameters(
            prompt=request.tagged_prompt,
            negative_prompt=request.negative_prompt,
            steps=request.steps or 0,
            sampler="",
            cfg_scale=request.guidance or 0.0,
            seed=image.seed,
            width=image.width,
            height=image.height,
            model=request.model or "",
        )
        stages = []
        for n, box in enumerate(boxes):  # each its own crop, as ADetailer fixes them
            asked = fix_request(
                source,
                picture,
                [box],
                tools.limits,
                seed=image.seed,
                user=request.user,
                models=tools.models,
            )
            stage = tools.queue(await tools.check(asked), f"{job.id}.fix{image.index}.{n}")
            job.stages.append(stage)
            stages.append(stage)
        fixes.append((image, picture, found, stages))
    what = " and ".join(request.fix)
    areas = sum(len(stages) for *_, stages in fixes)
    log.info(
        "job %s: fixing %s in %d of %d image(s), %d area(s)",
        job.id,
        what,
        len(fixes),
        len(made.images),
        areas,
    )
    done = job.stages[0].request.denoising_steps  # the first stage's, shown as done
    out = {image.index: image for image in made.images}
    run_s = made.run_s
    first = True
    for image, picture, found, stages in fixes:
        pictures, flagged = [], image.flagged
        for stage in stages:
            fixed = await (_follow(job, stage, done=done, extra=0) if first else stage.result())
            first = False
            run_s += fixed.run_s
            if fixed.images:  # else its numbers were not finite: that area as it was made
                pictures.append(await asyncio.to_thread(_decoded, fixed.images[0].png))
                flagged = flagged or fixed.images[0].flagged
        if not pictures:
            continue
        fields = fix_fields(
            found,
            tools.detectors,
            threshold=tools.threshold,
            strength=FIX_STRENGTH,
            padding=FIX_PADDING,
            blur=DEFAULT_MASK_BLUR,
        )
        merged = await asyncio.to_thread(merge_fixes, picture, pictures)
        out[image.index] = replace(
            image,
            png=await asyncio.to_thread(encode_with_fields, merged, image.png, fields),
            flagged=flagged,
            fixed=tuple(target for target, count in found.items() if count),
        )
    return replace(made, request=request, images=tuple(out.values()), run_s=run_s)


def _decoded(png: bytes) -> Image:
    from PIL import Image as PILImage

    with PILImage.open(io.BytesIO(png)) as opened:
        return opened.convert("RGB")
