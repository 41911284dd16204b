"""The engine: start and close, and submit requests to the configured scheduling policy.

The event loop only validates, queues and reports; the pipeline lives on one worker thread
(`worker.Worker`), and a `scheduling.Scheduler` decides what runs together. If the scheduler or
the worker dies, every pending and later call gets `EngineDead` instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from .config import EngineConfig
from .errors import EngineDead, EngineError, ShuttingDown
from .job import Job
from .request import ImageRequest, ModelProfile, validate
from .result import GenerationResult
from .scheduling import Lifecycle, Scheduler, make_scheduler
from .stats import EngineStats

if TYPE_CHECKING:
    from .worker import Worker

__all__ = ["Engine"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class Engine:
    """`async with Engine(config) as engine: job = engine.submit(ImageRequest("a cat"))`."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.limits = config.limits
        self.stats = EngineStats()
        self._worker: Worker | None = None
        self._lifecycle: Lifecycle | None = None
        self._scheduler: Scheduler | None = None
        self._task: asyncio.Task[None] | None = None
        self._dead: EngineDead | None = None
        self._ids = itertools.count(1)

    # Lifecycle
    async def start(self) -> None:
        """Load the model on the worker thread and start the scheduler."""
        from .worker import Worker  # torch is imported here, never at package import

        worker = Worker(self.config)
        profile = await worker.start()
        self._worker = worker
        self._lifecycle = Lifecycle(profile, self.stats)
        self._scheduler = await make_scheduler(self.config, worker, self._lifecycle)
        self._task = asyncio.create_task(self._run(), name="imagine-engine-loop")

    async def close(self, grace_s: float = 60.0) -> None:
        """Stop accepting, fail queued jobs with `ShuttingDown`, let running jobs finish (up to
        `grace_s` seconds, then fail them too), and free the worker thread.

        `ShuttingDown` tells a front end that the job did not fail on its own: it can keep the
        job for a restart instead of refunding or reporting an error.
        """
        lifecycle = self._lifecycle
        if self._scheduler is not None and lifecycle is not None and self._dead is None:
            for job in self._scheduler.close(ShuttingDown()):
                lifecycle.fail(job, ShuttingDown())
        if self._task is not None and not self._task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._task), grace_s)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        if lifecycle is not None:
            for job in lifecycle.running:
                lifecycle.fail(job, ShuttingDown())
        if self._worker is not None:
            await self._worker.close()

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
        return self._started()[0].profile

    @property
    def scheduling(self) -> str:
        """The policy in use: "batch" or "step" ("step" falls back when the model cannot)."""
        return self._started()[1].name

    @property
    def alive(self) -> bool:
        return self._dead is None and self._task is not None and not self._task.done()

    @property
    def queue_depth(self) -> int:
        return self._scheduler.queue_depth if self._scheduler is not None else 0

    @property
    def running(self) -> tuple[Job, ...]:
        return self._lifecycle.running if self._lifecycle is not None else ()

    async def run_in_worker(self, fn: Callable[[Any], T]) -> T:
        """Run `fn(pipeline)` on the worker thread, between calls.

        The only safe way to touch the pipeline from outside: adding a hook, loading a LoRA.
        """
        if self._worker is None:
            raise EngineError("The engine has not been started.")
        return await self._worker.with_pipeline(fn)

    # Submitting
    def prepare(self, request: ImageRequest) -> tuple[ImageRequest, tuple[str, ...]]:
        """Validate and resolve defaults without queueing (front ends check before reserving)."""
        if self._dead is not None:
            raise self._dead
        lifecycle, _ = self._started()
        assert self._worker is not None
        resolved, warnings = validate(
            request, self.limits, lifecycle.profile, self._worker.count_tokens
        )
        return resolved, tuple(warnings)

    def submit(self, request: ImageRequest, *, job_id: str | None = None) -> Job:
        """Validate and queue; raises `InvalidRequest`, `Busy` or `EngineDead` at once."""
        resolved, warnings = self.prepare(request)
        _, scheduler = self._started()
        job = Job(job_id or f"job-{next(self._ids)}", resolved, warnings, self._cancel)
        scheduler.submit(job)
        return job

    async def generate(self, request: ImageRequest) -> GenerationResult:
        """Submit and wait; cancels the job if the caller is cancelled."""
        job = self.submit(request)
        try:
            return await job.result()
        except asyncio.CancelledError:
            job.cancel()
            raise

    # Internals
    def _started(self) -> tuple[Lifecycle, Scheduler]:
        if self._lifecycle is None or self._scheduler is None:
            raise EngineError("The engine has not been started.")
        return self._lifecycle, self._scheduler

    async def _run(self) -> None:
        try:
            await self._started()[1].run()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # the scheduler or the worker died: nothing may hang
            self._die(exc)

    def _cancel(self, job: Job) -> None:
        if self._scheduler is not None:
            self._scheduler.cancel(job)

    def _die(self, exc: BaseException) -> None:
        if self._dead is not None:
            return
        log.error("engine loop died: %r", exc, exc_info=exc)
        self._dead = dead = EngineDead(f"{type(exc).__name__}: {exc}", exc)
        lifecycle, scheduler = self._started()
        for job in [*lifecycle.running, *scheduler.close(dead)]:
            lifecycle.fail(job, dead)
