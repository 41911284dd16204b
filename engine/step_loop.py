"""Step-level scheduling: requests join and leave between denoising steps, as LLM servers do
per token, instead of waiting for a whole batch to finish.

Runs on the event loop and never touches torch: every tensor operation is a call into
`stepper.Stepper` on the engine's one worker thread. One tick reads as schedule → execute →
update: drop cancelled requests, pick the size group whose turn it is, admit queued requests
into its free slots (fairly between users), run one denoising step over the group, finish the
requests with no steps left. Requests of one size share ticks whatever their steps, guidance
and seeds; different sizes cannot share a UNet call, so their groups take turns.

Failures keep the batch engine's contract: a failing tick is retried by halves down to the one
request that fails, which fails alone with `GenerationFailed`; a fatal error propagates to
`Engine._loop`, which fails everything pending with `EngineDead`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

from .batcher import Batcher, Queueable, _Entry
from .errors import Cancelled, GenerationFailed
from .job import Job, JobState
from .request import BatchKey
from .result import GenerationResult

if TYPE_CHECKING:
    from .service import Engine
    from .stepper import Sample, Stepper

__all__ = ["Size", "StepLoop", "StepQueue", "Tick"]

log = logging.getLogger(__name__)

Size = tuple[int, int]  # (width, height): requests of one size can share a UNet call
T = TypeVar("T")


def size_of(item: Queueable) -> Size:
    key = cast(BatchKey, item.key)
    return (key.width, key.height)


class StepQueue(Batcher):
    """The batcher's per-user queues, drained a few requests per tick instead of per batch.

    Admission order: users least recently admitted first, then one request per user per pass,
    so a user with twenty queued requests delays another user's single request by at most one
    free slot. Within a size group a request that does not fit yet is not overtaken by smaller
    ones behind it, so a four-image request cannot be starved by a stream of single images.
    """

    def fair_order(self) -> list[_Entry]:
        """Every queued entry in the order admission would take them (ignoring sizes)."""
        pending = {u: list(q.entries) for u, q in self._queues.items() if q.entries}
        users = sorted(pending, key=lambda u: (self._queues[u].served, pending[u][0].order))
        order: list[_Entry] = []
        total = sum(len(entries) for entries in pending.values())
        depth = 0
        while len(order) < total:
            order += [pending[u][depth] for u in users if depth < len(pending[u])]
            depth += 1
        return order

    def positions(self) -> dict[int, int]:
        """1-based place in line for every queued item, keyed by `id(item)`."""
        if self._positions is None:
            self._positions = {id(e.item): n for n, e in enumerate(self.fair_order(), 1)}
        return self._positions

    def sizes(self) -> list[Size]:
        """Sizes with queued requests, the most deserving first."""
        return list(dict.fromkeys(size_of(e.item) for e in self.fair_order()))

    def take(self, size: Size, room: int) -> list[Queueable]:
        """Admit requests of `size` in fair order while their images fit in `room`."""
        batch: list[_Entry] = []
        for entry in self.fair_order():
            if size_of(entry.item) != size:
                continue
            if entry.item.images > room:
                break
            batch.append(entry)
            room -= entry.item.images
        return self._take(batch) if batch else []

    async def wait_for_work(self) -> None:
        """Return once something is queued; raises the close reason once closed."""
        while True:
            if self._closed is not None:
                raise self._closed
            if self._where:
                return
            await self._wait(None)


def _out_of_memory(exc: BaseException) -> bool:
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


def _chunks(actives: list[_Active], max_rows: int) -> list[list[_Active]]:
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
    started: float  # loop time of admission
    peak: int = 0  # most images that shared one tick with it


@dataclass(frozen=True, slots=True)
class Tick:
    """What one tick ran, kept for tests, dashboards and benchmarks."""

    size: Size
    images: int
    requests: int
    seconds: float


class StepLoop:
    """The engine's loop when `EngineConfig.scheduling == "step"`; see the module docstring.

    It is part of `Engine` split out of `service.py`: it reads the engine's executor, stats and
    running list and reports through the engine's `_fail` and `_slot`.
    """

    def __init__(self, engine: Engine, stepper: Stepper) -> None:
        config = engine.config
        self.engine = engine
        self.stepper = stepper
        self.queue = StepQueue(config.max_batch_size, config.batch_wait_ms / 1000, config.max_queue)
        self.capacity = config.max_batch_size
        self.ticks: deque[Tick] = deque(maxlen=4096)
        self._groups: dict[Size, list[_Active]] = {}
        self._turns: dict[Size, int] = {}  # tick number a group last ran at
        self._row_limits: dict[Size, int] = {}  # UNet rows per forward that fit, after an OOM
        self._tick_no = 0

    @classmethod
    async def attach(cls, engine: Engine) -> StepLoop | None:
        """A step loop for the engine's loaded model, or None when the model cannot step."""
        from .stepper import Stepper, unsupported_reason

        runner, executor = engine._runner, engine._executor
        assert runner is not None and executor is not None

        def build() -> Stepper | str:
            reason = unsupported_reason(runner.model)
            return reason if reason is not None else Stepper(runner.model)

        built = await asyncio.get_running_loop().run_in_executor(executor, build)
        if isinstance(built, str):
            log.info("step-level scheduling unavailable (%s); batching whole calls", built)
            return None
        return cls(engine, built)

    @property
    def active(self) -> list[Job]:
        """Jobs being denoised, in every group."""
        return [a.job for group in self._groups.values() for a in group]

    async def run(self) -> None:
        """Tick until closed and drained; ends only by raising.

        Once the queue is closed, admitted requests still run to the end and then the close
        reason (`ShuttingDown`) is raised. Every admitted job stays in the engine's running
        list until it ends, so the engine can fail them all if it dies or gives up waiting.
        """
        while True:
            self._drop_cancelled()
            size = self._next_group()
            if size is None:
                await self.queue.wait_for_work()
                continue
            self._turns[size] = self._tick_no
            self._tick_no += 1
            await self._admit(size)
            group = self._groups.get(size)
            if group:
                await self._tick(size, list(group))
                await self._finish(size)

    # Schedule
    def _next_group(self) -> Size | None:
        """The size whose turn it is: the one that ran least recently, then the most deserving."""
        queued = self.queue.sizes()
        candidates = {s for s, g in self._groups.items() if g} | set(queued)
        if not candidates:
            return None
        rank = {s: n for n, s in enumerate(queued)}
        return min(candidates, key=lambda s: (self._turns.get(s, -1), rank.get(s, len(rank))))

    def _drop_cancelled(self) -> None:
        for group in self._groups.values():
            for active in [a for a in group if a.job.cancel_requested]:
                group.remove(active)  # its slot is free for this tick's admission
                self._end(active.job, Cancelled())

    async def _admit(self, size: Size) -> None:
        group = self._groups.setdefault(size, [])
        room = self.capacity - sum(a.sample.count for a in group)
        jobs = cast(list[Job], self.queue.take(size, room))
        if not jobs:
            return
        engine = self.engine
        engine._refresh_positions()
        loop = asyncio.get_running_loop()
        started = loop.time()
        for job in jobs:
            job.started_at = started
            job._update(state=JobState.RUNNING, position=None, step=0)
        engine._running.extend(jobs)
        slots = [engine._slot(job, loop) for job in jobs]
        outcomes = await self._on_worker(self.stepper.admit_all, slots)
        for job, outcome in zip(jobs, outcomes, strict=True):
            if isinstance(outcome, Exception):
                self._fail_alone(job, outcome)
            else:
                group.append(_Active(job, outcome, started))

    # Execute
    async def _tick(self, size: Size, actives: list[_Active]) -> None:
        images = sum(a.sample.count for a in actives)
        for active in actives:
            active.peak = max(active.peak, images)
        t0 = time.perf_counter()
        limit = self._row_limits.get(size)
        for chunk in _chunks(actives, limit) if limit else [actives]:
            await self._step(size, chunk)
        seconds = time.perf_counter() - t0
        self.engine.stats.record_call(images, seconds)
        self.ticks.append(Tick(size, images, len(actives), seconds))

    async def _step(self, size: Size, actives: Sequence[_Active]) -> None:
        """One step for `actives`; a failing forward is retried by halves down to one request.

        Out of memory also lowers the group's rows per forward for later ticks, so a group that
        does not fit is chunked up front instead of failing and splitting at every step.
        """
        try:
            errors = await self._on_worker(self.stepper.tick, [a.sample for a in actives])
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            from .runner import is_fatal

            if is_fatal(exc):
                raise
            log.warning("tick of %d requests failed: %r", len(actives), exc)
            rows = sum(a.sample.rows for a in actives)
            if len(actives) > 1 and _out_of_memory(exc):
                self._row_limits[size] = min(self._row_limits.get(size, rows), max(1, rows // 2))
            assert self.engine._runner is not None
            await self._on_worker(self.engine._runner.release_memory)
            if len(actives) > 1:
                self.engine.stats.splits += 1
                half = len(actives) // 2
                await self._step(size, actives[:half])
                await self._step(size, actives[half:])
                return
            self._groups[size].remove(actives[0])
            self._fail_alone(actives[0].job, exc)
            return
        for active, error in zip(actives, errors, strict=True):
            if error is not None:
                self._groups[size].remove(active)
                self._fail_alone(active.job, error)

    # Update
    async def _finish(self, size: Size) -> None:
        group = self._groups[size]
        done = [a for a in group if a.sample.done]
        if not done:
            return
        for active in done:
            group.remove(active)
        if not group:
            del self._groups[size]
        live = [a for a in done if not a.job.cancel_requested]
        for active in done:
            if active.job.cancel_requested:
                self._end(active.job, Cancelled())
        if not live:
            return
        outcomes = await self._on_worker(self.stepper.finish_all, [a.sample for a in live])
        loop = asyncio.get_running_loop()
        profile = self.engine.profile
        for active, outcome in zip(live, outcomes, strict=True):
            job = active.job
            if isinstance(outcome, Exception):
                self._fail_alone(job, outcome)
                continue
            if job.cancel_requested:
                self._end(job, Cancelled())
                continue
            self.engine.stats.images += len(outcome)
            self._end(
                job,
                None,
                GenerationResult(
                    request=job.request,
                    images=tuple(outcome),
                    model=profile.name,
                    sampler=profile.sampler,
                    warnings=job.warnings,
                    queued_s=active.started - job.submitted_at,
                    run_s=loop.time() - active.started,
                    batch_images=active.peak,
                ),
            )

    # Helpers
    async def _on_worker(self, fn: Callable[..., T], *args: Any) -> T:
        executor = self.engine._executor
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)

    def _fail_alone(self, job: Job, exc: Exception) -> None:
        from .runner import describe_failure, is_fatal

        if is_fatal(exc):
            raise exc  # Engine._loop fails every pending request with EngineDead
        log.warning("request %s failed: %r", job.id, exc)
        self.engine.stats.failed += 1
        self._end(job, GenerationFailed(describe_failure(exc), exc))

    def _end(
        self, job: Job, error: BaseException | None, result: GenerationResult | None = None
    ) -> None:
        engine = self.engine
        engine._drop_running([job])
        if error is not None:
            engine._fail(job, error)
        else:
            job._finish(result, None)
