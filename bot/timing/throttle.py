"""Pacing: the bot's own message edits (`EditThrottle`), and each user's commands (`UserRateLimit`).

Edits are paced under Discord's limit of about 5 edits per 5 seconds per channel.

Progress edits are optional (the next one shows newer progress anyway), so they take a slot
only if one is free; final edits (the result, a cancellation) wait for one. Several jobs in
one channel share the channel's window, so together they never earn a 429.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

__all__ = ["EditThrottle", "UserRateLimit"]


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


class UserRateLimit:
    """At most `count` commands or button presses per user in any `per` seconds.

    Checked before any work (and before the database is asked for more than a refusal row), so
    one user flooding the bot costs others nothing; users are independent windows. `count` 0
    turns the limit off.
    """

    def __init__(
        self, count: int, per: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.count = count
        self.per = per
        self._clock = clock
        self._windows: dict[int, deque[float]] = {}

    def hit(self, user_id: int) -> float | None:
        """Count one use by `user_id`; None if allowed, else seconds until one is allowed."""
        if self.count <= 0:
            return None
        now = self._clock()
        window = self._windows.setdefault(user_id, deque())
        while window and window[0] <= now - self.per:
            window.popleft()
        if len(window) >= self.count:
            return window[0] + self.per - now  # refused uses are not counted
        window.append(now)
        if len(self._windows) > 10_000:  # forget idle users now and then (memory stays bounded)
            self._windows = {u: w for u, w in self._windows.items() if w and w[-1] > now - self.per}
        return None
