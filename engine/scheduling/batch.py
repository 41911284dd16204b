"""Batch-level scheduling: compatible requests share one whole pipeline call.

A batch is led by the least recently served user's oldest request and filled round-robin, one
request per user per pass, with requests that share its `BatchKey`, up to `capacity` images.
So a user with twenty queued requests delays another user's single request by at most one
batch, and compatible requests from everyone ride together. A batch closes when full or
`wait_s` after its leader was queued. A batch whose model is not loaded waits for it (and asks
for it) while batches for loaded models run. Pure asyncio: the pipeline runs on the worker
thread.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, TypeVar

from ..config import EngineConfig
from ..errors import Cancelled, EngineDead
from ..job import Job
from ..queue import EXACT_POSITIONS_UP_TO, FairQueue, Queueable, Queued, serving_order
from .base import QueueingScheduler
from .lifecycle import Lifecycle
from .retry import split_on_failure

if TYPE_CHECKING:
    from ..worker import Worker

__all__ = ["BatchScheduler", "Batcher", "iter_batches", "plan_batches"]

T = TypeVar("T", bound=Queueable)


def plan_batches(
    queue: FairQueue[T], capacity: int, *, first_only: bool = False
) -> list[list[Queued[T]]]:
    """Split the queue into the batches the scheduler would run, in order (takes nothing)."""
    batches = iter_batches(queue, capacity)
    return [next(batches)] if first_only and len(queue) else list(batches)


def iter_batches(queue: FairQueue[T], capacity: int) -> Iterator[list[Queued[T]]]:
    """The batches the scheduler would run, in order, worked out one at a time as asked
    (the scheduler asks for the first whose model is loaded: usually the first). A batch
    stops looking as soon as it is full, so working out one costs the users it passes, not
    the whole queue."""
    pending = queue.pending()
    served = queue.served()
    number = max(served.values(), default=-1) + 1
    while pending:
        order = serving_order(pending, served)
        key = pending[order[0]][0].item.key
        batch: list[Queued[T]] = []
        room = capacity
        progress = True
        while progress and room > 0:
            progress = False
            for user in order:
                if room <= 0:
                    break
                for entry in pending[user]:
                    item = entry.item
                    if item.images <= room and (item.key is key or item.key == key):
                        batch.append(entry)
                        pending[user].remove(entry)
                        room -= item.images
                        progress = True
                        break
        for entry in batch:
            served[entry.item.user] = number
        pending = {u: entries for u, entries in pending.items() if entries}
        number += 1
        yield batch


class Batcher(FairQueue[T]):
    """The batch policy's queue: `next_batch` waits for a full batch or its leader's deadline."""

    def __init__(self, capacity: int, wait_s: float, max_queue: int) -> None:
        super().__init__(max_queue)
        self.capacity = capacity
        self.wait_s = wait_s

    def line(self) -> list[Queued[T]]:
        """Queued entries in the order their batches will run; for a long queue, its fair
        order (the same users' turns, without working out every batch: a thousand queued
        jobs would take a quarter of a second of the event loop)."""
        if len(self) > EXACT_POSITIONS_UP_TO:
            return self.fair_order()
        return [entry for batch in plan_batches(self, self.capacity) for entry in batch]

    async def next_batch(
        self,
        ready: Callable[[T], bool] = lambda _item: True,
        want: Callable[[list[T]], None] = lambda _items: None,
    ) -> list[T]:
        """Take the next batch once full, or once its leader has waited `wait_s`; only a batch
        whose items are `ready` (their model loaded), asking `want` for the others' models."""
        loop = asyncio.get_running_loop()
        while True:
            self.raise_if_closed()
            batches = iter_batches(self, self.capacity)
            batch = next(batches, None)
            if batch is not None and not ready(batch[0].item):
                # The leader's model is not loaded: ask for it (and keep the others that
                # waiting batches need), and run the first batch whose model is loaded.
                planned = [batch, *batches]
                want([b[0].item for b in planned if not ready(b[0].item)])
                batch = next((b for b in planned if ready(b[0].item)), None)
            if batch is None:
                await self.wait()
                continue
            deadline = min(e.enqueued for e in batch) + self.wait_s
            full = sum(e.item.images for e in batch) >= self.capacity
            if full or loop.time() >= deadline:
                return self.serve(batch)
            await self.wait(deadline - loop.time())


class BatchScheduler(QueueingScheduler[Batcher[Job]]):
    """`scheduling = "batch"`: each batch is one pipeline call on the worker."""

    name = "batch"

    def __init__(self, config: EngineConfig, worker: Worker, lifecycle: Lifecycle) -> None:
        queue: Batcher[Job] = Batcher(
            config.max_batch_size, config.batch_wait_ms / 1000, config.max_queue
        )
        super().__init__(queue, lifecycle)
        self.worker = worker
        self.running_model: str | None = None  # never unloaded while its batch runs

    def in_use(self) -> set[str]:
        return {self.running_model} if self.running_model else set()

    async def run(self) -> None:
        """Choose a batch, run it on the worker, record the outcome; until closed."""
        while True:
            try:
                batch = await self.queue.next_batch(
                    lambda job: self.ready(job.key.model),
                    lambda jobs: self.want([job.key.model for job in jobs]),
                )
            except EngineDead:  # closed: nothing is left to run
                return
            self.show_positions()
            await split_on_failure(
                batch,
                self._call,
                recover=self._recover,
                fail_alone=self.lifecycle.fail_alone,
                on_split=self.lifecycle.count_split,
            )

    async def _call(self, jobs: Sequence[Job]) -> None:
        """One pipeline call for `jobs`; raises if the call fails (nothing is delivered then)."""
        for job in jobs:
            if job.cancel_requested and not job.done():  # left while its earlier try failed
                self.lifecycle.fail(job, Cancelled())
        jobs = [job for job in jobs if not job.done()]
        if not jobs:
            return
        self.lifecycle.start(jobs)
        model = jobs[0].key.model
        if self.residency is not None:
            self.residency.touch(model)
        self.running_model = model
        t0 = time.perf_counter()
        try:
            outputs = await self.worker.run([self.lifecycle.slot(job) for job in jobs])
        finally:
            self.running_model = None
        seconds = time.perf_counter() - t0
        key = jobs[0].key
        images = self.lifecycle.record("batch", (key.width, key.height), jobs, seconds)
        for job, made in zip(jobs, outputs, strict=True):
            self.lifecycle.finish(job, made, run_s=seconds, batch_images=images)

    async def _recover(self, jobs: Sequence[Job], exc: Exception) -> None:
        self.lifecycle.put_back(jobs)
        await self.worker.release_memory()
