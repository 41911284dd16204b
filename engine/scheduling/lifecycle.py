"""Lifecycle: the one place that changes a `Job`, keeps the running set and counts the stats.

Both scheduling policies and the engine report here (a job started, stepped, finished, failed,
was cancelled), so the rules for what each outcome means are written once: a cancelled job
counts as cancelled, a job that fails alone counts as failed, a finished job's images count,
and a job stays in the running set until it ends, so a dying or closing engine can fail it.
Runs on the event loop; the worker thread reaches a job only through a `Slot`'s hooks, which
hop back onto the loop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Literal

from ..errors import Cancelled, GenerationFailed
from ..failures import NotFinite, describe_failure, is_fatal
from ..job import Job, JobState, Slot
from ..profile import ModelProfile
from ..result import GeneratedImage, GenerationResult
from ..stats import CallRecord, EngineStats

__all__ = ["Lifecycle"]

log = logging.getLogger(__name__)


class Lifecycle:
    """Job state changes, the running set and `EngineStats`, for one started engine."""

    def __init__(
        self,
        profile: ModelProfile,
        stats: EngineStats,
        profile_of: Callable[[str], ModelProfile | None] | None = None,
    ) -> None:
        self.profile = profile  # the default model's
        self.stats = stats
        self._profile_of = profile_of or (lambda _name: None)
        self._running: list[Job] = []

    @property
    def running(self) -> tuple[Job, ...]:
        """Jobs started and not yet ended, in start order."""
        return tuple(self._running)

    # Queued
    def place(self, positions: Mapping[Job, int], loading: Collection[str] = ()) -> None:
        """Show each queued job its place in line, and the model loading for it, if any."""
        for job, position in positions.items():
            model = job.request.model
            job.update_progress(position=position, loading=model if model in loading else None)

    # Running
    def start(self, jobs: Sequence[Job]) -> None:
        """Mark jobs as running (a job retried after a split keeps its first start time)."""
        now = asyncio.get_running_loop().time()
        for job in jobs:
            if job.started_at is None:
                job.started_at = now
            job.update_progress(state=JobState.RUNNING, position=None, step=0, loading=None)
            if job not in self._running:
                self._running.append(job)

    def slot(self, job: Job) -> Slot:
        """The job as the worker thread sees it: its request, and hooks back onto the loop."""
        loop = asyncio.get_running_loop()

        def on_step(step: int, total: int) -> None:
            update = functools.partial(job.update_progress, step=step, total_steps=total)
            loop.call_soon_threadsafe(update)

        def on_preview(png: bytes) -> None:
            loop.call_soon_threadsafe(deliver, png)

        def deliver(png: bytes) -> None:
            job.take_preview_request()
            job.update_progress(preview=png)

        return Slot(
            request=job.request,
            on_step=on_step,
            on_preview=on_preview,
            wants_preview=lambda: job.preview_requested,
            is_cancelled=lambda: job.cancel_requested,
        )

    def record(
        self,
        kind: Literal["batch", "tick"],
        size: tuple[int, int],
        jobs: Sequence[Job],
        seconds: float,
    ) -> int:
        """Count one call into the model over `jobs`; returns its images."""
        images = sum(job.images for job in jobs)
        self.stats.record(CallRecord(kind, size, images, len(jobs), seconds))
        return images

    def count_split(self) -> None:
        """Count a failed call retried as two halves."""
        self.stats.splits += 1

    def put_back(self, jobs: Sequence[Job]) -> None:
        """Take jobs out of the running set without ending them (they are about to be retried)."""
        for job in jobs:
            if job in self._running:
                self._running.remove(job)

    # Ended
    def finish(
        self, job: Job, images: Sequence[GeneratedImage], *, run_s: float, batch_images: int
    ) -> None:
        """Deliver a job's images, unless it was cancelled meanwhile.

        Images missing from `images` were left out because their numbers were not finite: the
        result counts them as `failed`, and a job left with none fails alone (`NotFinite`).
        """
        if job.cancel_requested:
            self.fail(job, Cancelled())
            return
        failed = job.request.count - len(images)
        if failed:
            self.stats.not_finite += failed
            log.warning(
                "request %s: %d of %d image(s) came out NaN or infinite; not delivered",
                job.id,
                failed,
                job.request.count,
            )
            if not images:
                self.fail_alone(job, NotFinite(failed))
                return
        self.put_back([job])
        self.stats.images += len(images)
        assert job.started_at is not None
        profile = self._profile_of(job.request.model or "") or self.profile
        result = GenerationResult(
            request=job.request,
            images=tuple(images),
            model=profile.name,
            sampler=profile.sampler,
            warnings=job.warnings,
            queued_s=job.started_at - job.submitted_at,
            run_s=run_s,
            batch_images=batch_images,
            failed=failed,
        )
        job.resolve(result, None)

    def fail(self, job: Job, error: BaseException) -> None:
        """End a job with `error`, counting cancellations and failures of its own."""
        self.put_back([job])
        if job.done():
            return
        if isinstance(error, Cancelled):
            self.stats.cancelled += 1
        elif isinstance(error, GenerationFailed):
            self.stats.failed += 1
        job.resolve(None, error)

    def fail_alone(self, job: Job, exc: Exception) -> None:
        """Fail a job whose own request cannot run; a fatal error is raised instead."""
        if is_fatal(exc):
            raise exc  # the engine fails every pending request with EngineDead
        log.warning("request %s failed: %r", job.id, exc)
        self.fail(job, GenerationFailed(describe_failure(exc), exc))
