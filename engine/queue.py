"""The engine's waiting line, shared by both scheduling policies: one queue per user, bounded.

Fairness is one rule, `serving_order`: the user served least recently goes first, then the
user whose oldest request came first. A policy takes requests out with `serve`, which marks
their users as just served; idle users are forgotten but keep their turn, so a user who just
ran goes behind the others. Which requests a policy takes, and so the place in line each
request is shown, is the policy's: it overrides `line()`. Pure asyncio: no torch, no threads.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from .errors import Busy

__all__ = [
    "EXACT_POSITIONS_UP_TO",
    "POSITIONS_EVERY",
    "FairQueue",
    "Queueable",
    "Queued",
    "serving_order",
]

#: Seconds between recomputations of every queued job's place in line while a long queue
#: changes; a queue of at most `EXACT_POSITIONS_UP_TO` jobs is placed again at every change.
#: A progress message shows its place at most every 2 s (the bot's edit interval): under a
#: burst of a thousand, placing them all four times a second was 7 % of the event loop's
#: time, in pauses of several milliseconds each.
POSITIONS_EVERY = 1.0
EXACT_POSITIONS_UP_TO = 64


class Queueable(Protocol):
    """What the queue and the policies need of a queued item."""

    @property
    def user(self) -> str: ...
    @property
    def key(self) -> Hashable: ...
    @property
    def images(self) -> int: ...


T = TypeVar("T", bound=Queueable)


@dataclass(eq=False, slots=True)
class Queued(Generic[T]):
    """One queued item with its arrival number (for tie-breaks) and loop time."""

    item: T
    order: int
    enqueued: float


@dataclass(slots=True)
class _UserQueue(Generic[T]):
    entries: list[Queued[T]] = field(default_factory=list)
    served: int = -1  # the turn this user last had a request taken in


def serving_order(
    pending: Mapping[str, Sequence[Queued[Any]]], served: Mapping[str, int]
) -> list[str]:
    """Users with queued work, least recently served first, then by their oldest request."""
    users = [user for user, entries in pending.items() if entries]
    return sorted(users, key=lambda u: (served.get(u, -1), pending[u][0].order))


class FairQueue(Generic[T]):
    """Per-user queues; `put` and `remove` are instant, `wait` sleeps until something changes."""

    def __init__(self, max_queue: int) -> None:
        self.max_queue = max_queue
        self._queues: dict[str, _UserQueue[T]] = {}
        self._where: dict[T, Queued[T]] = {}
        self._counter = itertools.count()
        self._turn = 0
        self._changed = asyncio.Event()
        self._closed: BaseException | None = None
        self._positions: dict[T, int] | None = None
        self._positions_at = 0.0
        self._stale = False  # the queue changed since `positions` were worked out

    def __len__(self) -> int:
        return len(self._where)

    @property
    def closed(self) -> BaseException | None:
        """The reason given to `close`, or None while open."""
        return self._closed

    def put(self, item: T, *, continuing: bool = False) -> None:
        """Queue an item, or raise `Busy` at once when full (the close reason once closed);
        `continuing`: a later stage of an admitted item, which a full queue takes too."""
        self.raise_if_closed()
        if len(self._where) >= self.max_queue and not continuing:
            raise Busy(len(self._where), self.max_queue)
        entry = Queued(item, next(self._counter), asyncio.get_running_loop().time())
        self._queues.setdefault(item.user, _UserQueue()).entries.append(entry)
        self._where[item] = entry
        self._touch()

    def remove(self, item: T) -> bool:
        """Take an item out of the queue (cancellation); False if it is not queued."""
        entry = self._where.pop(item, None)
        if entry is None:
            return False
        self._queues[item.user].entries.remove(entry)
        self._touch()
        return True

    def items(self) -> list[T]:
        """Everything queued, in arrival order."""
        return [e.item for e in sorted(self._where.values(), key=lambda e: e.order)]

    def pending(self) -> dict[str, list[Queued[T]]]:
        """A copy of each waiting user's entries, oldest first."""
        return {u: list(q.entries) for u, q in self._queues.items() if q.entries}

    def served(self) -> dict[str, int]:
        """The turn each known user was last served in (-1: not since they were idle)."""
        return {u: q.served for u, q in self._queues.items()}

    def fair_order(self) -> list[Queued[T]]:
        """Every entry in serving order, one request per user per pass (ignoring keys)."""
        pending = self.pending()
        users = serving_order(pending, self.served())
        order: list[Queued[T]] = []
        depth = 0
        while len(order) < len(self._where):
            order += [pending[u][depth] for u in users if depth < len(pending[u])]
            depth += 1
        return order

    def line(self) -> list[Queued[T]]:
        """The order in which the policy will take the queued entries; `fair_order` here."""
        return self.fair_order()

    def positions(self) -> dict[T, int]:
        """1-based place in `line()` of every queued item, as last worked out (`refresh`)."""
        if self._positions is None:
            self.refresh_positions()
        assert self._positions is not None
        return self._positions

    def refresh_positions(self) -> dict[T, int] | None:
        """Work the places out again if the queue changed: at once for a short queue, else once
        `POSITIONS_EVERY` seconds have passed since the last time (a burst of a thousand
        requests changes it a thousand times: each time would be a thousand places); the new
        places, else None."""
        now = asyncio.get_running_loop().time()
        if self._positions is not None and not self._stale:
            return None
        busy = len(self._where) > EXACT_POSITIONS_UP_TO
        if busy and self._positions is not None and now - self._positions_at < POSITIONS_EVERY:
            return None
        self._positions = {e.item: n for n, e in enumerate(self.line(), 1)}
        self._positions_at, self._stale = now, False
        return self._positions

    @property
    def positions_due(self) -> float | None:
        """Seconds until stale places may be worked out again (None: they are not stale)."""
        if not self._stale or self._positions is None:
            return None
        now = asyncio.get_running_loop().time()
        return max(0.0, self._positions_at + POSITIONS_EVERY - now)

    def serve(self, entries: Iterable[Queued[T]]) -> list[T]:
        """Take `entries` out (one turn of the policy) and mark their users as just served."""
        items = []
        for entry in entries:
            queue = self._queues[entry.item.user]
            queue.entries.remove(entry)
            queue.served = self._turn
            del self._where[entry.item]
            items.append(entry.item)
        self._turn += 1
        for user in [u for u, q in self._queues.items() if not q.entries]:
            # Forget idle users but keep their turn: a user who just ran goes behind others.
            if self._queues[user].served < self._turn - 1:
                del self._queues[user]
        self._touch()
        return items

    def close(self, reason: BaseException) -> list[T]:
        """Refuse new work with `reason`, wake the waiter, and hand back what was queued."""
        self._closed = reason
        items = self.items()
        self._queues.clear()
        self._where.clear()
        self._touch()
        return items

    def raise_if_closed(self) -> None:
        """Raise the close reason, if the queue is closed."""
        if self._closed is not None:
            raise self._closed

    async def wait(self, delay: float | None = None) -> None:
        """Sleep until the queue changes (put, remove, serve, close) or `delay` seconds pass."""
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), delay)
        except TimeoutError:
            pass

    def notify(self) -> None:
        """Wake the waiter: something it waits on besides the queue changed (a model loaded)."""
        self._changed.set()

    def _touch(self) -> None:
        self._stale = True
        self._changed.set()
