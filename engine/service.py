"""The engine: ties the pure-asyncio batcher to the torch runner on one worker thread.

The event loop only validates, queues and reports; the worker thread owns the pipeline. A
failing batch is split in halves and retried down to single requests so one bad request
fails alone. If the loop or the worker dies, every pending and later call gets `EngineDead`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from .batcher import Batcher
from .config import EngineConfig
from .errors import Cancelled, EngineDead, EngineError, GenerationFailed, ShuttingDown
from .job import Job, JobState
from .request import ImageRequest, Limits, ModelProfile, validate
from .result import GenerationResult

if TYPE_CHECKING:
    from .runner import Runner, Slot
    from .step_loop import StepLoop

__all__ = ["Engine", "EngineStats"]

log = logging.getLogger(__name__)
T = TypeVar("T")
RECENT_CALLS = 1024


@dataclass(slots=True)
class EngineStats:
    """Counters for dashboards and benchmarks; updated on the loop thread.

    Per-call figures keep only the most recent `RECENT_CALLS` (a bot runs for months; in
    step mode there is one call per denoising tick); totals are plain counters.
    """

    images: int = 0
    batches: int = 0  # pipeline calls (ticks in step mode)
    batch_images: int = 0  # images over all those calls
    failed: int = 0
    cancelled: int = 0
    splits: int = 0
    batch_sizes: deque[int] = field(default_factory=lambda: deque(maxlen=RECENT_CALLS))
    batch_seconds: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT_CALLS))

    def record_call(self, images: int, seconds: float) -> None:
        self.batches += 1
        self.batch_images += images
        self.batch_sizes.append(images)
        self.batch_seconds.append(seconds)


class Engine:
    """`async with Engine(config) as engine: job = engine.submit(ImageRequest("a cat"))`."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.limits = Limits(
            max_width=config.max_width,
            max_height=config.max_height,
            min_size=config.min_size,
            max_steps=config.max_steps,
            max_count=config.max_count,
            max_guidance=config.max_guidance,
        )
        self.stats = EngineStats()
        self._runner: Runner | None = None
        self._profile: ModelProfile | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._batcher: Batcher | None = None
        self._task: asyncio.Task[None] | None = None
        self._step_loop: StepLoop | None = None
        self._dead: EngineDead | None = None
        self._running: list[Job] = []
        self._ids = itertools.count(1)

    # Lifecycle
    async def start(self) -> None:
        """Load the model on the worker thread and start the batching loop."""
        from .runner import Runner  # torch is imported here, never at package import

        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imagine-engine")
        self._runner = Runner(self.config)
        loop = asyncio.get_running_loop()
        try:
            self._profile = await loop.run_in_executor(self._executor, self._runner.load)
        except Exception as exc:
            self._executor.shutdown(wait=False)
            raise EngineError(f"Could not load model {self.config.model!r}: {exc}") from exc
        self._batcher = Batcher(
            self.config.max_batch_size, self.config.batch_wait_ms / 1000, self.config.max_queue
        )
        if self.config.scheduling == "step":  # None when the model family cannot step
            from .step_loop import StepLoop

            self._step_loop = await StepLoop.attach(self)
            if self._step_loop is not None:
                self._batcher = self._step_loop.queue
        self._task = asyncio.create_task(self._loop(), name="imagine-engine-loop")

    async def close(self, grace_s: float = 60.0) -> None:
        """Stop accepting, fail queued jobs with `ShuttingDown`, let the running batch finish
        (up to `grace_s` seconds, then fail it too), and free the worker thread.

        `ShuttingDown` tells a front end that the job did not fail on its own: it can keep the
        job for a restart instead of refunding or reporting an error.
        """
        if self._batcher is not None and self._dead is None:
            for job in self._batcher.close(ShuttingDown()):
                job._finish(None, ShuttingDown())  # type: ignore[attr-defined]
        if self._task is not None and not self._task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._task), grace_s)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        for job in self._running:
            job._finish(None, ShuttingDown())
        self._running.clear()
        if self._executor is not None:
            executor = self._executor
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: executor.shutdown(wait=True, cancel_futures=True)
            )

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # Introspection
    @property
    def profile(self) -> ModelProfile:
        if self._profile is None:
            raise EngineError("The engine has not been started.")
        return self._profile

    @property
    def alive(self) -> bool:
        return self._dead is None and self._task is not None and not self._task.done()

    @property
    def queue_depth(self) -> int:
        return len(self._batcher) if self._batcher else 0

    @property
    def running(self) -> tuple[Job, ...]:
        return tuple(self._running)

    async def run_in_worker(self, fn: Callable[[Any], T]) -> T:
        """Run `fn(pipeline)` on the worker thread, between batches.

        The only safe way to touch the pipeline from outside: adding a hook, loading a LoRA.
        """
        if self._runner is None or self._executor is None:
            raise EngineError("The engine has not been started.")
        runner = self._runner
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(runner.model.pipe))

    # Submitting
    def prepare(self, request: ImageRequest) -> tuple[ImageRequest, tuple[str, ...]]:
        """Validate and resolve defaults without queueing (front ends check before reserving)."""
        if self._dead is not None:
            raise self._dead
        assert self._runner is not None
        resolved, warnings = validate(request, self.limits, self.profile, self._runner.count_tokens)
        return resolved, tuple(warnings)

    def submit(self, request: ImageRequest, *, job_id: str | None = None) -> Job:
        """Validate and queue; raises `InvalidRequest`, `Busy` or `EngineDead` at once."""
        resolved, warnings = self.prepare(request)
        assert self._batcher is not None
        job = Job(job_id or f"job-{next(self._ids)}", resolved, warnings, self._cancel)
        self._batcher.put(job)
        self._refresh_positions()
        return job

    async def generate(self, request: ImageRequest) -> GenerationResult:
        """Submit and wait; cancels the job if the caller is cancelled."""
        job = self.submit(request)
        try:
            return await job.result()
        except asyncio.CancelledError:
            job.cancel()
            raise

    # The loop
    async def _loop(self) -> None:
        assert self._batcher is not None
        try:
            if self._step_loop is not None:  # step-level scheduling: engine/step_loop.py
                await self._step_loop.run()
                return
            while True:
                batch: list[Job] = await self._batcher.next_batch()  # type: ignore[assignment]
                self._refresh_positions()
                await self._run(batch)
        except ShuttingDown:
            return
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # the loop or the worker died: nothing may hang
            self._die(exc)

    async def _run(self, jobs: Sequence[Job], *, split: bool = False) -> None:
        jobs = [j for j in jobs if not j.cancel_requested]
        if not jobs:
            return
        assert self._runner is not None and self._executor is not None
        loop = asyncio.get_running_loop()
        started = loop.time()
        for job in jobs:
            job.started_at = job.started_at or started
            job._update(state=JobState.RUNNING, position=None, step=0)
        self._running.extend(jobs)
        slots = [self._slot(job, loop) for job in jobs]
        t0 = time.perf_counter()
        try:
            outputs = await loop.run_in_executor(self._executor, self._runner.run, slots)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            from .runner import describe_failure, is_fatal

            if is_fatal(exc):
                self._die(exc)  # fails this batch's jobs too, while they are still listed
                raise
            log.warning("batch of %d failed: %r", len(jobs), exc)
            await loop.run_in_executor(self._executor, self._runner.release_memory)
            if len(jobs) > 1:
                self.stats.splits += 1
                half = len(jobs) // 2
                self._drop_running(jobs)
                await self._run(jobs[:half], split=True)
                await self._run(jobs[half:], split=True)
                return
            self.stats.failed += 1
            self._fail(jobs[0], GenerationFailed(describe_failure(exc), exc))
            return
        finally:
            self._drop_running(jobs)
        seconds = time.perf_counter() - t0
        n_images = sum(j.images for j in jobs)
        self.stats.record_call(n_images, seconds)
        profile = self.profile
        for job, images in zip(jobs, outputs, strict=True):
            if job.cancel_requested:
                self._fail(job, Cancelled())
                continue
            self.stats.images += len(images)
            job._finish(
                GenerationResult(
                    request=job.request,
                    images=tuple(images),
                    model=profile.name,
                    sampler=profile.sampler,
                    warnings=job.warnings,
                    queued_s=(job.started_at or started) - job.submitted_at,
                    run_s=seconds,
                    batch_images=n_images,
                ),
                None,
            )

    def _slot(self, job: Job, loop: asyncio.AbstractEventLoop) -> Slot:
        from .runner import Slot

        def on_step(step: int, total: int) -> None:
            loop.call_soon_threadsafe(functools.partial(job._update, step=step, total_steps=total))

        def on_preview(png: bytes) -> None:
            def deliver() -> None:
                job._take_preview_request()
                job._update(preview=png)

            loop.call_soon_threadsafe(deliver)

        return Slot(
            request=job.request,
            on_step=on_step,
            on_preview=on_preview,
            wants_preview=lambda: job._preview_wanted,
            is_cancelled=lambda: job.cancel_requested,
        )

    # Bookkeeping
    def _cancel(self, job: Job) -> None:
        if self._batcher is not None and self._batcher.remove(job):
            self._fail(job, Cancelled())
            self._refresh_positions()
        # A running job is dropped when its batch ends; if all of a batch cancel, the runner
        # interrupts denoising at the next step.

    def _fail(self, job: Job, error: BaseException) -> None:
        if isinstance(error, Cancelled):
            self.stats.cancelled += 1
        job._finish(None, error)

    def _drop_running(self, jobs: Sequence[Job]) -> None:
        for job in jobs:
            if job in self._running:
                self._running.remove(job)

    def _refresh_positions(self) -> None:
        if self._batcher is None:
            return
        positions = self._batcher.positions()
        for job in self._batcher_jobs():
            job._update(position=positions.get(id(job)))

    def _batcher_jobs(self) -> list[Job]:
        assert self._batcher is not None
        return self._batcher.items()  # type: ignore[return-value]

    def _die(self, exc: BaseException) -> None:
        if self._dead is not None:
            return
        log.error("engine loop died: %r", exc, exc_info=exc)
        self._dead = EngineDead(f"{type(exc).__name__}: {exc}", exc)
        pending: list[Any] = list(self._running)
        if self._batcher is not None:
            pending += self._batcher.close(self._dead)
        for job in pending:
            job._finish(None, self._dead)
        self._running.clear()
