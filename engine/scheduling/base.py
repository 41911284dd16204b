"""The `Scheduler` interface, and the queue-facing half that both policies share.

A scheduler decides which queued jobs run together and when; the engine only hands it jobs
and awaits `run()`. Both policies keep their jobs in a `FairQueue`, fail a job cancelled
while queued, and show every waiting job its place in line, so that half is written once in
`QueueingScheduler`; each policy adds its own queue type and its own `run()`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Generic, Protocol, TypeVar

from ..errors import Cancelled, EngineDead, GenerationFailed
from ..job import Job
from ..queue import FairQueue
from ..residency import Residency
from .lifecycle import Lifecycle

__all__ = ["QueueingScheduler", "Scheduler"]


class Scheduler(Protocol):
    """A scheduling policy: `run()` chooses work, runs it on the worker, records the outcome."""

    @property
    def name(self) -> str:
        """The policy: `batch` or `step`."""
        ...

    def submit(self, job: Job, *, continuing: bool = False) -> None:
        """Queue a job, or raise `Busy` (queue full) or the close reason; `continuing`: a
        later stage of a job already admitted (`fixstage.py`), queued even when full."""
        ...

    def cancel(self, job: Job) -> bool:
        """Fail a job still queued with `Cancelled`; False if it is not queued (running or over)."""
        ...

    def positions(self) -> Mapping[Job, int]:
        """1-based place in line of every queued job."""
        ...

    @property
    def queue_depth(self) -> int:
        """Jobs waiting to start."""
        ...

    async def run(self) -> None:
        """Schedule until closed and drained; a fatal error propagates."""
        ...

    def close(self, reason: EngineDead) -> list[Job]:
        """Refuse new jobs with `reason`; return the queued ones (running ones go on)."""
        ...

    def in_use(self) -> set[str]:
        """Models with work running now (they must stay loaded)."""
        ...

    def attach(self, residency: Residency) -> None:
        """Use `residency` to know which models are loaded and to ask for others."""
        ...

    def changed(self) -> None:
        """Something besides the queue changed (a model loaded or failed): look again."""
        ...


Q = TypeVar("Q", bound=FairQueue[Job])


class QueueingScheduler(Generic[Q]):
    """Submitting, cancelling, places in line and closing, over a policy's own `FairQueue`."""

    def __init__(self, queue: Q, lifecycle: Lifecycle) -> None:
        self.queue = queue
        self.lifecycle = lifecycle
        self.residency: Residency | None = None  # set by the engine after start-up
        self._show_later: asyncio.TimerHandle | None = None  # places shown once due

    def attach(self, residency: Residency) -> None:
        self.residency = residency

    def ready(self, model: str) -> bool:
        """Whether `model` is loaded (always, for an engine without a residency)."""
        return self.residency is None or self.residency.ready(model)

    def want(self, models: list[str]) -> None:
        """Ask for the model the most deserving waiting work needs (`models[0]`); the others
        are kept loaded rather than unloaded to make room, when there is a choice. Only the
        first is asked for: asking for all would unload each for the next before it ran."""
        if self.residency is None or not models:
            return
        loading = self.residency.loading
        self.residency.want(models[0], needed=models)
        failed = self.residency.take_failures()
        for job in [j for j in self.queue.items() if j.request.model in failed]:
            self.queue.remove(job)
            error = failed[job.request.model or ""]
            self.lifecycle.fail(job, GenerationFailed(str(error), error))
        if failed or self.residency.loading != loading:  # say "loading model X" at once
            self.show_positions(loading_changed=True)

    def submit(self, job: Job, *, continuing: bool = False) -> None:
        self.queue.put(job, continuing=continuing)
        self.show_positions()

    def cancel(self, job: Job) -> bool:
        if not self.queue.remove(job):
            return False  # a running job ends at its next step or when its call returns
        self.lifecycle.fail(job, Cancelled())
        self.show_positions()
        return True

    def positions(self) -> Mapping[Job, int]:
        return self.queue.positions()

    @property
    def queue_depth(self) -> int:
        return len(self.queue)

    def close(self, reason: EngineDead) -> list[Job]:
        return self.queue.close(reason)

    def changed(self) -> None:
        """Something besides the queue changed (a model loaded or failed): look again."""
        self.queue.notify()
        self.show_positions(loading_changed=True)

    def show_positions(self, *, loading_changed: bool = False) -> None:
        """Tell every queued job its place in line after the queue changed: at once, or,
        during a burst of changes, once the places are due to be worked out again (at most
        every `queue.POSITIONS_EVERY` seconds); and the model loading for it, at once."""
        positions = self.queue.refresh_positions()
        if positions is None and loading_changed:
            positions = self.queue.positions()
        if positions is None:
            due = self.queue.positions_due
            if due is not None and self._show_later is None:
                loop = asyncio.get_running_loop()
                self._show_later = loop.call_later(due, self._show_due)
            return
        loading = self.residency.loading if self.residency is not None else ()
        self.lifecycle.place(positions, loading)

    def _show_due(self) -> None:
        self._show_later = None
        self.show_positions()
