"""Pacing message edits under Discord's limit of about 5 edits per 5 seconds per channel.

Progress edits are optional (the next one shows newer progress anyway), so they take a slot
only if one is free; final edits (the result, a cancellation) wait for one. Several jobs in
one channel share the channel's window, so together they never earn a 429.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

__all__ = ["EditThrottle"]


class EditThrottle:
    """A sliding window per channel: at most `count` edits in any `per` seconds."""

    def __init__(
        self, count: int = 4, per: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.count = count
        self.per = per
        self._clock = clock
        self._windows: dict[int, deque[float]] = {}

    def _window(self, channel_id: int) -> deque[float]:
        window = self._windows.setdefault(channel_id, deque())
        now = self._clock()
        while window and window[0] <= now - self.per:
            window.popleft()
        return window

    def try_acquire(self, channel_id: int) -> bool:
        """Take a slot now if one is free (progress edits)."""
        window = self._window(channel_id)
        if len(window) >= self.count:
            return False
        window.append(self._clock())
        return True

    async def acquire(self, channel_id: int) -> None:
        """Wait for a slot (edits that must happen)."""
        while not self.try_acquire(channel_id):
            window = self._windows[channel_id]
            await asyncio.sleep(max(0.01, window[0] + self.per - self._clock()))
