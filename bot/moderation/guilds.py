"""Each guild's rules: the config's `[moderation]` (and `[quota] daily_images`) with the
guild's own `/settings` on top. The one place that merges them; `/settings` changes go
through here so the next request sees them.

Read through a short cache: a request pays no database read for them, and a change made by
another bot process on the same database is seen within `CACHE_SECONDS`. Requests that find
the cache empty at once (a burst's first moment) share one read.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

from ..config import ModerationSettings
from ..ledger import SETTINGS, GuildSettings, Ledger, SettingsChange
from .rules import Moderation

__all__ = ["CACHE_SECONDS", "GuildRules"]

CACHE_SECONDS = 30.0
#: The `/settings` that are `[moderation]` keys (daily_images is the ledger's: quotas).
_MODERATION = ("allowed_channel_ids", "blocked_words", "forced_negative_prompt", "flagged_images")


class GuildRules:
    """`await rules.moderation(guild_id)`: the `Moderation` in force in that guild."""

    def __init__(self, ledger: Ledger, defaults: ModerationSettings, daily_images: int) -> None:
        self.ledger = ledger
        self.defaults = defaults
        self.daily_images = daily_images
        self._cache: dict[int, tuple[float, GuildSettings, Moderation]] = {}
        self._reading: dict[int, asyncio.Future[tuple[GuildSettings, Moderation]]] = {}

    async def moderation(self, guild_id: int) -> Moderation:
        return (await self._entry(guild_id))[1]

    async def own(self, guild_id: int) -> GuildSettings:
        """The guild's own settings (None: the config's)."""
        return (await self._entry(guild_id))[0]

    async def effective(self, guild_id: int) -> list[tuple[str, Any, bool]]:
        """Every setting: (name, the value in force, whether the guild set it itself)."""
        own = await self.own(guild_id)
        defaults = {"daily_images": self.daily_images} | {
            name: getattr(self.defaults, name) for name in _MODERATION
        }
        return [
            (
                name,
                defaults[name] if own.value(name) is None else own.value(name),
                own.value(name) is not None,
            )
            for name in SETTINGS
        ]

    async def change(self, guild_id: int, name: str, value: Any, by: int) -> SettingsChange:
        """Set one setting (None: back to the config's), audited; seen at the next request."""
        change = await self.ledger.change_guild_setting(guild_id, name, value, by)
        self._cache.pop(guild_id, None)
        self._reading.pop(guild_id, None)  # a read begun before the change is not kept
        return change

    async def _entry(self, guild_id: int) -> tuple[GuildSettings, Moderation]:
        cached = self._cache.get(guild_id)
        if cached is not None and time.monotonic() - cached[0] < CACHE_SECONDS:
            return cached[1], cached[2]
        reading = self._reading.get(guild_id)
        if reading is None:
            reading = self._reading[guild_id] = asyncio.ensure_future(self._read(guild_id))
            reading.add_done_callback(lambda done: done.cancelled() or done.exception())
        return await asyncio.shield(reading)  # a waiter cancelled leaves it to the others

    async def _read(self, guild_id: int) -> tuple[GuildSettings, Moderation]:
        """Read the guild's settings once for every request waiting on them, and cache them
        unless a `/settings` change came meanwhile."""
        mine = asyncio.current_task()
        try:
            now = time.monotonic()
            own = GuildSettings() if guild_id == 0 else await self.ledger.guild_settings(guild_id)
            overrides = {n: own.value(n) for n in _MODERATION if own.value(n) is not None}
            moderation = Moderation(dataclasses.replace(self.defaults, **overrides))
            if self._reading.get(guild_id) is mine:
                self._cache[guild_id] = (now, own, moderation)
            return own, moderation
        finally:
            if self._reading.get(guild_id) is mine:
                del self._reading[guild_id]
