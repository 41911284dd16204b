"""A server clock tests can move forward, and snowflake ids derived from it.

Discord's deadlines (3 s to answer, 15 min token lifetime, rate-limit windows) are measured on
this clock so a test can jump over them with :meth:`ServerClock.advance` instead of waiting.
Real time still flows: the clock is ``time.monotonic()`` plus an offset.
"""

from __future__ import annotations

import datetime as dt
import itertools
import time

DISCORD_EPOCH_MS = 1_420_070_400_000


class ServerClock:
    """Monotonic seconds (for deadlines) and wall time (for timestamps), both advanceable."""

    def __init__(self) -> None:
        self._offset = 0.0
        self._mono0 = time.monotonic()
        self._wall0 = time.time()

    def now(self) -> float:
        """Monotonic seconds on the server clock; compare only with other ``now()`` values."""
        return time.monotonic() + self._offset

    def time(self) -> float:
        """Unix time on the server clock (drives snowflakes and message timestamps)."""
        return self._wall0 + (self.now() - self._mono0)

    def utcnow(self) -> dt.datetime:
        """Aware UTC datetime on the server clock."""
        return dt.datetime.fromtimestamp(self.time(), dt.UTC)

    def iso(self) -> str:
        """ISO-8601 timestamp as Discord sends it."""
        return self.utcnow().isoformat()

    def advance(self, seconds: float) -> None:
        """Jump forward; negative values are refused because deadlines only move one way."""
        if seconds < 0:
            raise ValueError("the server clock cannot go backwards")
        self._offset += seconds

    @property
    def offset(self) -> float:
        """Total seconds the clock was advanced by tests."""
        return self._offset


class SnowflakeFactory:
    """Unique, increasing Discord snowflakes whose timestamp part follows the server clock."""

    def __init__(self, clock: ServerClock) -> None:
        self._clock = clock
        self._last = 0
        self._increment = itertools.count()

    def next(self) -> int:
        """A new id, strictly greater than every id handed out before."""
        ms = int(self._clock.time() * 1000) - DISCORD_EPOCH_MS
        value = (ms << 22) | (1 << 17) | (next(self._increment) & 0xFFF)
        if value <= self._last:
            value = self._last + 1
        self._last = value
        return value


__all__ = ["DISCORD_EPOCH_MS", "ServerClock", "SnowflakeFactory"]
