"""Discord's idea of "now", for Discord's deadlines (the 15-minute interaction token).

The token expires on Discord's clock, not the host's. The host's clock may be off (a VM
without NTP), so the bot estimates Discord's time from what Discord sends: every snowflake
(interaction and message ids) and every `edited_timestamp` is a reading of Discord's clock.
The estimate only moves forward and errs late, so a token is given up early, never late.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import discord

from .limits import TOKEN_LIFETIME, TOKEN_MARGIN

__all__ = ["DiscordClock"]


class DiscordClock:
    """Host monotonic time plus the largest offset to Discord's clock seen so far."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        # Start from the host's wall clock; readings from Discord can only move it forward.
        self._offset = time.time() - monotonic()

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._monotonic() + self._offset, UTC)

    def observe(self, when: datetime | None) -> None:
        """A timestamp Discord just produced (a new snowflake, an edit time)."""
        if when is None:
            return
        offset = when.timestamp() - self._monotonic()
        self._offset = max(self._offset, offset)

    def observe_snowflake(self, snowflake: int) -> None:
        self.observe(discord.utils.snowflake_time(snowflake))

    def token_usable(self, interaction_id: int, *, margin: timedelta = TOKEN_MARGIN) -> bool:
        """Whether the token of `interaction_id` has more than `margin` left to live."""
        created = discord.utils.snowflake_time(interaction_id)
        return self.now() < created + TOKEN_LIFETIME - margin
