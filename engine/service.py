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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from .catalog import ModelCatalog, ModelInfo
from .client import Checked
from .config import EngineConfig
from .errors import EngineDead, EngineError, InvalidRequest, ShuttingDown
from .fixing import require_detectors
from .fixstage import FixTools, start_fixing
from .job import Job
from .profile import ModelProfile
from .request import ImageRequest, validate
from .residency import Residency
from .result import GenerationResult
from .scheduling import Lifecycle, Scheduler, make_scheduler
from .stats import EngineStats

if TYPE_CHECKING:
    from PIL.Image import Image

    from .worker import Worker

__all__ = ["Engine"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class Engine(ModelCatalog):
    """`async with Engine(config) as engine: result = await engine.generate(ImageRequest("a cat"))`.

    Every configured model is loaded once at start-up (its profile learnt, its LoRAs
    checked); afterwards a request names its model and waits in the queue while it loads.
    """

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
        self._residency: Residency | None = None
        self._loras = {lora.name: lora for lora in config.loras}
        self._checker: ThreadPoolExecutor | None = None  # where `check` runs
        self._closing = False

    # Lifecycle
    async def start(self) -> None:
        """Load the model on the worker thread and start the scheduler."""
        from .worker import Worker  # torch is imported here, never at package import

        worker = Worker(self.config)
        loaded = await worker.start()
        self._worker = worker
        profile = worker.profile(self.config.default_model_name)
        assert profile is not None
        self._lifecycle = Lifecycle(profile, self.stats, worker.profile)
        scheduler = await make_scheduler(self.config, worker, self._lifecycle)
        residency = Residency(
            worker,
            self.config.max_loaded_models,
            in_use=scheduler.in_use,
            on_change=scheduler.changed,
            fits=worker.fits,
        )
        for name in loaded:
            residency.mark_loaded(name)
        scheduler.attach(residency)
        self._residency = residency
        self._scheduler = scheduler
        self._checker = ThreadPoolExecutor(1, thread_name_prefix="imagine-check")
        self._task = asyncio.create_task(self._run(), name="imagine-engine-loop")

    async def close(self, grace_s: float = 60.0) -> None:
        """Stop accepting, fail queued jobs with `ShuttingDown`, let running jobs finish (up to
        `grace_s` seconds, then fail them too), and free the worker thread.

        `ShuttingDown` tells a front end that the job did not fail on its own: it can keep the
        job for a restart instead of refunding or reporting an error.
        """
        self._closing = True
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
        if self._checker is not None:
            self._checker.shutdown(wait=False, cancel_futures=True)
        if self._residency is not None:
            await self._residency.close()
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
    def profile_named(self, name: str) -> ModelProfile:
        self._started()
        assert self._worker is not None
        profile = self._worker.profile(name)
        assert profile is not None  # every model loaded once at start-up
        return profile

    def models(self) -> list[ModelInfo]:
        """Every configured model: its profile, whether it is loaded, its memory, its LoRAs."""
        self._started()
        assert self._worker is not None
        worker, residency = self._worker, self._residency
        out = []
        for name in worker.model_names:
            profile = worker.profile(name)
            assert profile is not None  # every model loaded once at start-up
            out.append(
                ModelInfo(
                    profile=profile,
                    loaded=worker.is_loaded(name),
                    loading=residency is not None and name in residency.loading,
                    memory_bytes=worker.memory_bytes(name),
                    loras=tuple(lora for lora in self.config.loras if lora.fits(name)),
                    default=name == self.default_model,
                )
            )
        return out

    @property
    def model_loads(self) -> int:
        """Models loaded since start-up to serve a request (what switching costs)."""
        return self._residency.loads if self._residency is not None else 0

    @property
    def scheduling(self) -> str:
        """The policy in use: "batch" or "step" ("step" falls back when the model cannot)."""
        return self._started()[1].name

    @property
    def alive(self) -> bool:
        return self._dead is None and self._task is not None and not self._task.done()

    def backend(self) -> dict[str, Any]:
        """What runs the engine, for `/healthz`: this process."""
        return {"kind": "local", "replicas_alive": 1 if self.alive else 0}

    @property
    def queue_depth(self) -> int:
        return self._scheduler.queue_depth if self._scheduler is not None else 0

    @property
    def running(self) -> tuple[Job, ...]:
        return self._lifecycle.running if self._lifecycle is not None else ()

    async def run_in_worker(self, fn: Callable[[Any], T], model: str | None = None) -> T:
        """Run `fn(pipeline)` on the worker thread, between calls (default: the default model,
        which must be loaded).

        The only safe way to touch a pipeline from outside: adding a hook, say.
        """
        if self._worker is None:
            raise EngineError("The engine has not been started.")
        return await self._worker.with_pipeline(fn, model)

    # The canvas's helper models
    async def region_mask(self, image: Any, words: str) -> Any:
        """The mask of where `image` shows what `words` name (`[region] model`, run on the
        worker thread between ticks); `InvalidRequest` when it finds nothing there."""
        from .canvas import region_mask

        if not isinstance(words, str) or not words.strip():
            raise InvalidRequest("region", "Say which part of the picture to change.")
        scores = await self._live_worker().segment(image, words.strip())
        mask = region_mask(scores, image.size)
        if mask is None:
            raise InvalidRequest(
                "region", f"Nothing in the picture looks like {words.strip()!r}: name it otherwise."
            )
        return mask

    async def gan_upscale(self, image: Any) -> Any:
        """`image` enlarged by the GAN upscaler (`[upscale] model`, run on the worker thread
        between ticks); `InvalidRequest` when none is configured."""
        if not self.config.upscale_model:
            raise InvalidRequest("upscale", "No GAN upscaler is configured ([upscale] model).")
        return await self._live_worker().gan_upscale(image)

    async def detect_faces(self, image: Any) -> list[tuple[int, int, int, int]]:
        """The faces' boxes in `image`, best first (`[fix] detector`, run on the worker thread
        between ticks; empty: none found); `InvalidRequest` when no detector is configured."""
        return await self.detect(image, "faces")

    async def detect(self, image: Any, target: str) -> list[tuple[int, int, int, int]]:
        """`detect_faces` for `target` "faces" or "hands" (`[fix] hands_detector`)."""
        require_detectors((target,), self.config.fix_detectors)
        return await self._live_worker().detect(image, target)

    def _live_worker(self) -> Worker:
        if self._dead is not None:
            raise self._dead
        if self._worker is None:
            raise EngineError("The engine has not been started.")
        return self._worker

    # Submitting
    def prepare(self, request: ImageRequest) -> Checked:
        """`check` on the calling thread (the command line and tests; the bot uses `check`,
        which keeps tokenizing and resizing off its event loop)."""
        if self._dead is not None:
            raise self._dead
        self._started()
        worker = self._worker
        assert worker is not None
        profile = self.profile_of(request.model)
        resolved, warnings = validate(
            request,
            self.limits,
            profile,
            lambda text: worker.count_tokens(profile.name, text),
            loras=self._loras,
            count_chunks=worker.count_chunks(profile.name),
            fixers=self.config.fix_detectors,
        )
        return Checked(resolved, tuple(warnings))

    async def check(self, request: ImageRequest) -> Checked:
        """Validate and resolve defaults without queueing, on the engine's checking thread:
        one thread, so its tokenizer copies are never shared, and one check at a time, so a
        burst of large pictures being resized holds one picture's memory, not ten."""
        if self._checker is None:
            self._started()
            raise EngineError("The engine has not been started.")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._checker, self.prepare, request)

    def submit(self, checked: Checked, *, job_id: str | None = None) -> Job:
        """Queue a checked request as it is; raises `Busy` or `EngineDead` at once. A request
        with `fix` is one job of two stages (`fixstage.py`)."""
        job_id = job_id or f"job-{next(self._ids)}"
        if not checked.request.fix:
            return self._queue(checked, job_id)
        tools = FixTools(
            check=self.check,
            queue=lambda stage, stage_id: self._queue(stage, stage_id, continuing=True),
            detect=self._detect,
            limits=self.limits,
            models=self.model_names,
            detectors=self.config.fix_detectors,
            threshold=self.config.fix_threshold,
            closing=lambda: self._closing,
        )
        made = self._queue(Checked(replace(checked.request, fix=()), checked.warnings), job_id)
        return start_fixing(tools, checked, made)

    def _queue(self, checked: Checked, job_id: str, *, continuing: bool = False) -> Job:
        if self._dead is not None:
            raise self._dead
        _, scheduler = self._started()
        job = Job(job_id, checked.request, checked.warnings, self._cancel)
        scheduler.submit(job, continuing=continuing)
        return job

    async def _detect(self, image: Any, target: str) -> list[tuple[int, int, int, int]]:
        return await self._live_worker().detect(image, target)

    async def generate(self, request: ImageRequest) -> GenerationResult:
        """Check, submit and wait; cancels the job if the caller is cancelled."""
        return await self.submit(await self.check(request)).awaited()

    @property
    def describer_bytes(self) -> int:
        """Bytes the describe model and the tagger hold on their device (0: not loaded)."""
        return self._worker.describer_bytes if self._worker is not None else 0

    async def describe(self, picture: Image, style: str = "") -> list[str]:
        """Up to four candidate prompts for `picture` in `style` ("prose": `[describe] model`,
        see `describe.py`; "tags": `[describe] tagger`, see `tagger.py`; "": the first
        configured), on the describer's own thread; `EngineError` when that style is off or
        its model cannot load or fit."""
        if self._dead is not None:
            raise self._dead
        if self._worker is None:
            raise EngineError("The engine has not been started.")
        return await self._worker.describe(picture, style)

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
