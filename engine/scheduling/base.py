"""The `Scheduler` interface, and the queue-facing half that both policies share.

A scheduler decides which queued jobs run together and when; the engine only hands it jobs
and awaits `run()`. Both policies keep their jobs in a `FairQueue`, fail a job cancelled
while queued, and show every waiting job its place in line, so that half is written once in
`QueueingScheduler`; each policy adds its own queue type and its own `run()`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Generic, Protocol, TypeVar

from ..errors import Cancelled, EngineDead
from ..job import Job
from ..queue import FairQueue
from .lifecycle import Lifecycle

__all__ = ["QueueingScheduler", "Scheduler"]


class Scheduler(Protocol):
    """A scheduling policy: `run()` chooses work, runs it on the worker, records the outcome."""

    @property
    def name(self) -> str:
        """The policy: `batch` or `step`."""
        ...

    def submit(self, job: Job) -> None:
        """Queue a job, or raise `Busy` (queue full) or the close reason."""
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


Q = TypeVar("Q", bound=FairQueue[Job])


class QueueingScheduler(Generic[Q]):
    """Submitting, cancelling, places in line and closing, over a policy's own `FairQueue`."""

    def __init__(self, queue: Q, lifecycle: Lifecycle) -> None:
        self.queue = queue
        self.lifecycle = lifecycle

    def submit(self, job: Job) -> None:
        self.queue.put(job)
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

    def show_positions(self) -> None:
        """Tell every queued job its place in line (after the queue changed)."""
        self.lifecycle.place(self.queue.positions())
