"""Step-level scheduling: requests join and leave between denoising steps, as LLM servers do
per token, instead of waiting for a whole batch to finish.

Runs on the event loop and never touches torch: every tensor operation is a call into the
worker's `Stepper`. One tick reads as schedule → execute → update: drop cancelled requests,
pick the size group whose turn it is, admit queued requests into its free slots (fairly
between users), run one denoising step over the group, finish the requests with no steps left.
Requests of one group (model, LoRA set, text length, size, an edit's picture sizes) share
ticks whatever their steps, guidance and seeds; different groups cannot share a UNet call,
so they take turns, and a group whose model is not loaded waits for it (and asks for it)
while the others run.

Failures keep the batch policy's contract: a failing tick is retried by halves down to the one
request that fails, which fails alone with `GenerationFailed`; a fatal error propagates to the
engine, which fails everything pending with `EngineDead`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from ..config import EngineConfig
from ..errors import Cancelled, EngineDead
from ..failures import is_out_of_memory
from ..job import Job
from ..queue import FairQueue, Queueable, Queued
from ..request import BatchKey
from .base import QueueingScheduler
from .lifecycle import Lifecycle
from .retry import split_on_failure

if TYPE_CHECKING:
    from ..stepper import Sample
    from ..worker import Worker

__all__ = ["MAX_GROUP_WAIT", "Group", "StepQueue", "StepScheduler"]

#: Seconds a group with work may wait while others with less work left run (its ageing
#: bound): past it, the longest-waiting group runs next.
MAX_GROUP_WAIT = 3.0

#: (model, LoRA set, text windows, width, height, an edit's picture sizes): requests that
#: can share a UNet call.
Group = tuple[str, tuple[tuple[str, float], ...], int, int, int, tuple[tuple[int, int], ...]]
T = TypeVar("T", bound=Queueable)


def group_of(key: Hashable) -> Group:
    """The group a queued item's `BatchKey` belongs to."""
    assert isinstance(key, BatchKey)
    return key.group


def model_of(group: Group) -> str:
    return group[0]


def size_of(group: Group) -> tuple[int, int]:
    return (group[3], group[4])


class StepQueue(FairQueue[T]):
    """Per-user queues drained a few requests per tick instead of per batch.

    Admission order is the queue's fair order: users least recently admitted first, then one
    request per user per pass, so a user with twenty queued requests delays another user's
    single request by at most one free slot. Within a size group a request that does not fit
    yet is not overtaken by smaller ones behind it, so a four-image request cannot be starved
    by a stream of single images.
    """

    def groups(self) -> list[Group]:
        """Groups with queued requests, the most deserving first."""
        return list(dict.fromkeys(group_of(e.item.key) for e in self.fair_order()))

    def heads(self) -> dict[Group, Queued[T]]:
        """Each group's most deserving queued entry."""
        heads: dict[Group, Queued[T]] = {}
        for entry in self.fair_order():
            heads.setdefault(group_of(entry.item.key), entry)
        return heads

    def take(self, group: Group, room: int) -> list[T]:
        """Admit requests of `group` in fair order while their images fit in `room`."""
        chosen: list[Queued[T]] = []
        for entry in self.fair_order():
            if group_of(entry.item.key) != group:
                continue
            if entry.item.images > room:
                break
            chosen.append(entry)
            room -= entry.item.images
        return self.serve(chosen) if chosen else []

    async def wait_for_work(self) -> None:
        """Return once something is queued; raises the close reason once closed."""
        while True:
            self.raise_if_closed()
            if len(self):
                return
            await self.wait()


def _chunks(actives: Sequence[_Active], max_rows: int) -> list[list[_Active]]:
    """Consecutive runs of at most `max_rows` UNet rows (a lone request may exceed it)."""
    chunks: list[list[_Active]] = [[]]
    rows = 0
    for active in actives:
        if chunks[-1] and rows + active.sample.rows > max_rows:
            chunks.append([])
            rows = 0
        chunks[-1].append(active)
        rows += active.sample.rows
    return chunks


@dataclass(eq=False, slots=True)
class _Active:
    job: Job
    sample: Sample
    peak: int = 0  # most images that shared one tick with it


class StepScheduler(QueueingScheduler[StepQueue[Job]]):
    """`scheduling = "step"`; see the module docstring. Needs a worker whose
    `start_stepping()` succeeded (`make_scheduler` checks)."""

    name = "step"

    def __init__(self, config: EngineConfig, worker: Worker, lifecycle: Lifecycle) -> None:
        super().__init__(StepQueue(config.max_queue), lifecycle)
        self.worker = worker
        self.capacity = config.max_batch_size
        self._groups: dict[Group, list[_Active]] = {}
        self._ran_at: dict[Group, float] = {}  # loop time a group last ran
        self._row_limits: dict[Group, int] = {}  # UNet rows per forward that fit, after an OOM
        self._left: list[Sample] = []  # samples that left unfinished: their runs end next

    def in_use(self) -> set[str]:
        """Models with admitted requests: never unloaded under them."""
        return {model_of(group) for group, actives in self._groups.items() if actives}

    async def run(self) -> None:
        """Tick until closed and drained.

        Once the queue is closed, admitted requests still run to the end. Every admitted job
        stays in the running set until it ends, so the engine can fail them all if it dies or
        gives up waiting.
        """
        while True:
            self._drop_cancelled()
            await self._discard_left()
            size = self._next_group()
            if size is None:
                if len(self.queue):  # everything queued waits for a model to load
                    await self.queue.wait()
                    continue
                try:
                    await self.queue.wait_for_work()
                except EngineDead:  # closed and nothing left to run
                    return
                continue
            self._ran_at[size] = asyncio.get_running_loop().time()
            await self._admit(size)
            group = self._groups.get(size)
            if group:
                await self._tick(size, list(group))
                await self._finish(size)

    # Schedule
    def _next_group(self) -> Group | None:
        """The group whose turn it is, among those whose model is loaded (the others' models
        are asked for): the one with the least work left (its requests' remaining steps times
        their denoiser rows and pixels: the shortest finish first, so short requests are not
        slowed by long ones taking turns with them), unless a group has waited longer than
        `MAX_GROUP_WAIT` (the longest-waiting then), so no group starves."""
        heads = self.queue.heads()
        queued = list(heads)
        if queued and not self.ready(model_of(queued[0])):
            # The most deserving request waits for its model: admit nobody else meanwhile,
            # so the running groups drain and a busy model cannot starve another.
            self.want([model_of(g) for g in queued if not self.ready(model_of(g))])
            queued = []
        queued = [g for g in queued if self.ready(model_of(g))]
        candidates = {s for s, g in self._groups.items() if g} | set(queued)
        if not candidates:
            return None
        now = asyncio.get_running_loop().time()

        def waited(group: Group) -> float:
            since = self._ran_at.get(group)
            if since is None or not self._groups.get(group):  # queued: since its oldest
                since = heads[group].enqueued if group in heads else now
            return now - since

        overdue = [g for g in candidates if waited(g) > MAX_GROUP_WAIT]
        if overdue:
            return max(overdue, key=waited)
        rank = {s: n for n, s in enumerate(queued)}
        return min(candidates, key=lambda s: (self._work_left(s, heads), rank.get(s, len(rank))))

    def _work_left(self, group: Group, heads: dict[Group, Queued[Job]]) -> float:
        """Denoiser work until the group's next request finishes, counting its queued head,
        which joins its next tick: the fewest steps left of those requests x the rows of each
        of its ticks x pixels. Shortest remaining work first, as a request sees it: a
        2-step request beside a 30-step one finishes after 2 of their shared ticks."""
        width, height = size_of(group)
        steps: list[int] = []
        rows = 0
        for active in self._groups.get(group) or ():
            steps.append(active.sample.steps_left)
            rows += max(1, active.sample.rows)
        if group in heads:  # it joins the group's next tick
            request = heads[group].item.request
            guided = 2 if (request.guidance or 0.0) > 1.0 else 1
            steps.append(request.denoising_steps)
            rows += request.count * guided
        return float(min(steps) * rows * width * height)

    def _drop_cancelled(self) -> None:
        for group in self._groups.values():
            for active in [a for a in group if a.job.cancel_requested]:
                group.remove(active)  # its slot is free for this tick's admission
                self._left.append(active.sample)
                self.lifecycle.fail(active.job, Cancelled())

    async def _discard_left(self) -> None:
        """End the runs of samples that left without finishing, on the worker (per model)."""
        left, self._left = self._left, []
        by_model: dict[str, list[Sample]] = {}
        for sample in left:
            by_model.setdefault(sample.request.model or "", []).append(sample)
        for samples in by_model.values():
            await self.worker.discard(samples)

    async def _admit(self, size: Group) -> None:
        group = self._groups.setdefault(size, [])
        room = self.capacity - sum(a.sample.count for a in group)
        jobs = self.queue.take(size, room)
        if not jobs:
            return
        if self.residency is not None:
            self.residency.touch(model_of(size))
        self.show_positions()
        self.lifecycle.start(jobs)
        outcomes = await self.worker.admit([self.lifecycle.slot(job) for job in jobs])
        for job, outcome in zip(jobs, outcomes, strict=True):
            if isinstance(outcome, Exception):
                self.lifecycle.fail_alone(job, outcome)
            else:
                group.append(_Active(job, outcome))

    # Execute
    async def _tick(self, size: Group, actives: list[_Active]) -> None:
        images = sum(a.sample.count for a in actives)
        for active in actives:
            active.peak = max(active.peak, images)
        t0 = time.perf_counter()
        limit = self._row_limits.get(size)
        for chunk in _chunks(actives, limit) if limit else [actives]:
            await split_on_failure(
                chunk,
                self._step,
                recover=self._recover,
                fail_alone=self._fail_alone,
                on_split=self.lifecycle.count_split,
                what="tick",
            )
        seconds = time.perf_counter() - t0
        self.lifecycle.record("tick", size_of(size), [a.job for a in actives], seconds)

    async def _step(self, actives: Sequence[_Active]) -> None:
        """One step for `actives`; raises only when the shared forward fails."""
        errors = await self.worker.tick([a.sample for a in actives])
        for active, error in zip(actives, errors, strict=True):
            if error is not None:
                self._fail_alone(active, error)

    async def _recover(self, actives: Sequence[_Active], exc: Exception) -> None:
        """Out of memory also lowers the group's rows per forward for later ticks, so a group
        that does not fit is chunked up front instead of failing and splitting every step."""
        if len(actives) > 1 and is_out_of_memory(exc):
            size = group_of(actives[0].job.key)
            rows = sum(a.sample.rows for a in actives)
            self._row_limits[size] = min(self._row_limits.get(size, rows), max(1, rows // 2))
        await self.worker.release_memory()

    def _fail_alone(self, active: _Active, exc: Exception) -> None:
        self._groups[group_of(active.job.key)].remove(active)
        self._left.append(active.sample)
        self.lifecycle.fail_alone(active.job, exc)

    # Update
    async def _finish(self, size: Group) -> None:
        group = self._groups[size]
        done = [a for a in group if a.sample.done]
        if not done:
            return
        for active in done:
            group.remove(active)
        if not group:
            del self._groups[size]
        live = []
        for active in done:
            if active.job.cancel_requested:
                self.lifecycle.fail(active.job, Cancelled())
            else:
                live.append(active)
        if not live:
            return
        outcomes = await self.worker.finish([a.sample for a in live])
        now = asyncio.get_running_loop().time()
        for active, outcome in zip(live, outcomes, strict=True):
            if isinstance(outcome, Exception):
                self.lifecycle.fail_alone(active.job, outcome)
            else:
                job = active.job
                assert job.started_at is not None
                run_s = now - job.started_at
                self.lifecycle.finish(job, outcome, run_s=run_s, batch_images=active.peak)
