"""A handle on one submitted request: progress to watch, a result to await, a way to cancel.

Lives on the event loop. The engine changes it only through `scheduling.Lifecycle`, and the
worker thread reports into it only through a `Slot`'s hooks, which hop onto the loop with
`loop.call_soon_threadsafe`, so every field is read and written on the loop's thread.
"""

from __future__ import annotations

import asyncio
import enum
import functools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace

from .errors import Cancelled
from .request import BatchKey, ImageRequest
from .result import GenerationResult

__all__ = ["Job", "JobState", "Progress", "Slot"]


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class Progress:
    """A snapshot for display: place in line while queued, step i of n while running."""

    state: JobState
    position: int | None = None  # 1 = next to run
    step: int = 0
    total_steps: int = 0
    preview: bytes | None = None  # small PNG of the current latents, when asked for
    loading: str | None = None  # queued while this model loads

    @property
    def fraction(self) -> float:
        return self.step / self.total_steps if self.total_steps else 0.0


class Job:
    """Returned by `Engine.submit`; `await job.result()` gives the images or raises."""

    def __init__(
        self,
        job_id: str,
        request: ImageRequest,
        warnings: tuple[str, ...],
        on_cancel: Callable[[Job], None],
    ) -> None:
        self.id = job_id
        self.request = request
        self.warnings = warnings
        self._on_cancel = on_cancel
        self._loop = asyncio.get_running_loop()
        self._future: asyncio.Future[GenerationResult] = self._loop.create_future()
        self._progress = Progress(JobState.QUEUED, total_steps=request.steps or 0)
        self._changed = asyncio.Event()
        self._cancel_requested = False
        self._preview_wanted = False
        self.submitted_at = self._loop.time()
        self.started_at: float | None = None

    # What the schedulers read.
    @property
    def user(self) -> str:
        return self.request.user

    @functools.cached_property
    def key(self) -> BatchKey:
        """Computed once: the schedulers read it for every queued job on every decision."""
        return self.request.key

    @functools.cached_property
    def images(self) -> int:
        return self.request.count

    # What callers use.
    @property
    def progress(self) -> Progress:
        return self._progress

    @property
    def state(self) -> JobState:
        return self._progress.state

    def done(self) -> bool:
        return self._future.done()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel_requested

    async def result(self) -> GenerationResult:
        """The images; raises `Cancelled`, `GenerationFailed` or `EngineDead`."""
        return await asyncio.shield(self._future)

    async def awaited(self) -> GenerationResult:
        """`result()` for a caller who owns the job: if the caller is cancelled, so is it."""
        try:
            return await self.result()
        except asyncio.CancelledError:
            self.cancel()
            raise

    def cancel(self) -> bool:
        """Leave the queue, or stop counting on a running batch; False if already finished."""
        if self.done():
            return False
        self._cancel_requested = True
        self._on_cancel(self)
        return True

    def request_preview(self) -> None:
        """Ask for a preview of the latents at the next denoising step (one-shot)."""
        self._preview_wanted = True

    async def updates(self) -> AsyncIterator[Progress]:
        """Yield the progress now and at every change until the job ends (coalescing bursts)."""
        last: Progress | None = None
        while True:
            current = self._progress
            if current != last:
                yield current
                last = current
            if self.done():
                return
            self._changed.clear()
            await self._changed.wait()

    # Engine-internal: only `scheduling.Lifecycle` calls these, on the loop thread.
    @property
    def preview_requested(self) -> bool:
        """Whether a preview is wanted at the next step (read from the worker thread too)."""
        return self._preview_wanted

    def update_progress(self, **changes: object) -> None:
        """Replace fields of the progress snapshot, waking `updates()` if anything changed.
        Nothing is copied when nothing changes: every queued job is placed again after each
        change of a long queue, and most keep their place."""
        current = self._progress
        if all(getattr(current, name) == value for name, value in changes.items()):
            return
        self._progress = replace(current, **changes)  # type: ignore[arg-type]
        self._changed.set()

    def take_preview_request(self) -> bool:
        """Consume the one-shot preview request; whether there was one."""
        wanted, self._preview_wanted = self._preview_wanted, False
        return wanted

    def resolve(self, result: GenerationResult | None, error: BaseException | None) -> None:
        """End the job with its result or an error (a second call is ignored)."""
        if self._future.done():
            return
        if error is not None:
            state = JobState.CANCELLED if isinstance(error, Cancelled) else JobState.FAILED
            self._future.set_exception(error)
            # Nobody may be awaiting a job whose caller gave up; don't log "never retrieved".
            self._future.exception()
        else:
            assert result is not None
            state = JobState.DONE
            self._future.set_result(result)
        self.update_progress(state=state, position=None)
        self._changed.set()


@dataclass(slots=True)
class Slot:
    """One request inside a call, with the hooks the worker thread calls (see `Lifecycle.slot`)."""

    request: ImageRequest
    on_step: Callable[[int, int], None]
    on_preview: Callable[[bytes], None]
    wants_preview: Callable[[], bool]
    is_cancelled: Callable[[], bool]
