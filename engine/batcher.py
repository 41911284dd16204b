"""Fair, compatible batching of queued requests. Pure asyncio: no torch, no threads.

Requests wait in one queue per user. A batch is led by the least recently served user's
oldest request and filled round-robin, one request per user per pass, with requests that
share its `BatchKey`, up to `capacity` images. So a user with twenty queued requests delays
another user's single request by at most one batch, and compatible requests from everyone
ride together. A batch closes when full or `wait_s` after its leader was queued.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from .errors import Busy

__all__ = ["Batcher", "Queueable", "plan_batches"]


class Queueable(Protocol):
    """What the batcher needs of a queued item."""

    @property
    def user(self) -> str: ...
    @property
    def key(self) -> Hashable: ...
    @property
    def images(self) -> int: ...


@dataclass(eq=False, slots=True)
class _Entry:
    item: Queueable
    order: int  # arrival order, for tie-breaks
    enqueued: float  # loop time


@dataclass(slots=True)
class _UserQueue:
    entries: list[_Entry] = field(default_factory=list)
    served: int = -1  # number of the last batch this user had a request in


def plan_batches(
    queues: dict[str, _UserQueue], capacity: int, *, first_only: bool = False
) -> list[list[_Entry]]:
    """Split the queues into the batches the loop would run, in order (does not mutate)."""
    pending = {u: list(q.entries) for u, q in queues.items() if q.entries}
    served = {u: q.served for u, q in queues.items()}
    batches: list[list[_Entry]] = []
    number = max(served.values(), default=-1) + 1
    while pending:
        order = sorted(pending, key=lambda u: (served[u], pending[u][0].order))
        key = pending[order[0]][0].item.key
        batch: list[_Entry] = []
        room = capacity
        progress = True
        while progress and room > 0:
            progress = False
            for user in order:
                entries = pending.get(user)
                if not entries:
                    continue
                for entry in entries:
                    if entry.item.key == key and entry.item.images <= room:
                        batch.append(entry)
                        entries.remove(entry)
                        room -= entry.item.images
                        progress = True
                        break
        for entry in batch:
            served[entry.item.user] = number
            if not pending.get(entry.item.user):
                pending.pop(entry.item.user, None)
        number += 1
        batches.append(batch)
        if first_only:
            break
    return batches


class Batcher:
    """The engine's queue. `put` and `remove` are instant; `next_batch` awaits work."""

    def __init__(self, capacity: int, wait_s: float, max_queue: int) -> None:
        self.capacity = capacity
        self.wait_s = wait_s
        self.max_queue = max_queue
        self._queues: dict[str, _UserQueue] = {}
        self._where: dict[int, _Entry] = {}  # id(item) -> entry
        self._counter = itertools.count()
        self._changed = asyncio.Event()
        self._batches = 0
        self._closed: BaseException | None = None
        self._positions: dict[int, int] | None = None

    def __len__(self) -> int:
        return len(self._where)

    @property
    def queued_images(self) -> int:
        return sum(e.item.images for e in self._where.values())

    def put(self, item: Queueable) -> None:
        """Queue an item or raise `Busy` at once when the queue is full."""
        if self._closed is not None:
            raise self._closed
        if len(self._where) >= self.max_queue:
            raise Busy(len(self._where), self.max_queue)
        entry = _Entry(item, next(self._counter), asyncio.get_running_loop().time())
        self._queues.setdefault(item.user, _UserQueue()).entries.append(entry)
        self._where[id(item)] = entry
        self._touch()

    def remove(self, item: Queueable) -> bool:
        """Take an item out of the queue (cancellation); False if it is not queued."""
        entry = self._where.pop(id(item), None)
        if entry is None:
            return False
        self._queues[item.user].entries.remove(entry)
        self._touch()
        return True

    def items(self) -> list[Queueable]:
        """Everything queued, in arrival order."""
        return [e.item for e in sorted(self._where.values(), key=lambda e: e.order)]

    def positions(self) -> dict[int, int]:
        """1-based place in line for every queued item, keyed by `id(item)`, as batches will run."""
        if self._positions is None:
            place = 0
            positions: dict[int, int] = {}
            for batch in plan_batches(self._queues, self.capacity):
                for entry in batch:
                    place += 1
                    positions[id(entry.item)] = place
            self._positions = positions
        return self._positions

    async def next_batch(self) -> list[Queueable]:
        """Wait for the next batch: full, or its leader has waited `wait_s`."""
        loop = asyncio.get_running_loop()
        while True:
            if self._closed is not None:
                raise self._closed
            planned = plan_batches(self._queues, self.capacity, first_only=True)
            if not planned:
                await self._wait(None)
                continue
            batch = planned[0]
            deadline = min(e.enqueued for e in batch) + self.wait_s
            full = sum(e.item.images for e in batch) >= self.capacity
            if full or loop.time() >= deadline:
                return self._take(batch)
            await self._wait(deadline - loop.time())

    def close(self, exc: BaseException) -> list[Queueable]:
        """Refuse new work with `exc`, wake the waiter, and hand back what was queued."""
        self._closed = exc
        items = self.items()
        self._queues.clear()
        self._where.clear()
        self._touch()
        return items

    def _take(self, batch: Iterable[_Entry]) -> list[Queueable]:
        items = []
        for entry in batch:
            queue = self._queues[entry.item.user]
            queue.entries.remove(entry)
            queue.served = self._batches
            del self._where[id(entry.item)]
            items.append(entry.item)
        self._batches += 1
        for user in [u for u, q in self._queues.items() if not q.entries]:
            # Forget idle users but keep their turn: a user who just ran goes behind others.
            if self._queues[user].served < self._batches - 1:
                del self._queues[user]
        self._touch()
        return items

    async def _wait(self, delay: float | None) -> None:
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), delay)
        except TimeoutError:
            pass

    def _touch(self) -> None:
        self._positions = None
        self._changed.set()
