"""`ImagineBot`: the discord.py client, given its long-lived resources by `app.py`.

`setup_hook` (run by discord.py after the token is accepted) registers the persistent
buttons, adds the cogs and syncs the slash commands; nothing here opens a database or loads
a model (discord.py's `examples/advanced_startup.py` pattern). The bot also owns its
`Metrics` (see `ops.py`) and the per-user `UserRateLimit`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from collections.abc import Awaitable
from datetime import timedelta
from typing import Any, TypeVar

import discord
from discord.ext import commands
from discord.http import Route
from discord.webhook.async_ import AsyncWebhookAdapter, async_context
from sqlalchemy import text

from engine import Engine

from .buttons import CancelButton, DeleteButton, RerollButton
from .clock import DiscordClock
from .config import BotConfig
from .errors import RateLimited
from .jobs import JobService
from .ledger import Ledger
from .moderation import Moderation
from .ops import HealthChecks, Metrics
from .throttle import EditThrottle, UserRateLimit
from .tree import ImagineTree

__all__ = ["ImagineBot"]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Seconds between metric gauge updates (and event-loop lag probes).
METRICS_INTERVAL = 1.0
#: Seconds the database health check may take before it counts as down.
DATABASE_CHECK_TIMEOUT = 3.0
_CALLBACK = re.compile(r"/interactions/(\d+)/[^/]+/callback$")


class _MeteredAdapter(AsyncWebhookAdapter):
    """discord.py's adapter for interaction responses and followups, metered by the bot."""

    def __init__(self, bot: ImagineBot) -> None:
        super().__init__()
        self._bot = bot

    async def request(self, route: Route, *args: Any, **kwargs: Any) -> Any:
        return await self._bot._metered(super().request(route, *args, **kwargs), route)


class ImagineBot(commands.AutoShardedBot):
    """Slash commands only: no message content, no member list, no prefix commands."""

    def __init__(
        self,
        *,
        config: BotConfig,
        ledger: Ledger,
        engine: Engine,
        guild_ready_timeout: float = 2.0,
    ) -> None:
        intents = discord.Intents.none()
        intents.guilds = True  # channels (NSFW flag), roles and our own permissions
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            tree_cls=ImagineTree,
            help_command=None,
            # Nothing pings unless a message names who it may ping (the requester).
            allowed_mentions=discord.AllowedMentions.none(),
            guild_ready_timeout=guild_ready_timeout,
        )
        self.config = config
        self.ledger = ledger
        self.engine = engine
        self.discord_clock = DiscordClock()
        self.edit_throttle = EditThrottle()
        self.moderation = Moderation(config.moderation)
        self.rate_limit = UserRateLimit(config.moderation.commands_per_minute)
        self.metrics = Metrics()
        self.jobs = JobService(self)
        self._received: dict[int, float] = {}  # interaction id → monotonic time it arrived
        self._batches_seen = 0  # engine batches already turned into metrics
        self._count_http_errors()

    # -- rate limits ------------------------------------------------------------------------

    def rate_limited(self, user_id: int) -> RateLimited | None:
        """Count one command or press by `user_id`; the refusal to raise when over the limit."""
        wait = self.rate_limit.hit(user_id)
        if wait is None:
            return None
        return RateLimited(discord.utils.utcnow() + timedelta(seconds=math.ceil(wait)))

    # -- operations -------------------------------------------------------------------------

    def health_checks(self) -> HealthChecks:
        return HealthChecks(
            gateway=self.gateway_connected, engine=lambda: self.engine.alive, database=self._db_ok
        )

    def gateway_connected(self) -> bool:
        """Every shard's websocket is open (`is_ready()` is not: it waits for guild chunks)."""
        shards = self.shards
        return (
            not self.is_closed()
            and bool(shards)
            and not any(shard.is_closed() for shard in shards.values())
        )

    async def _db_ok(self) -> bool:
        async def ping() -> None:
            async with self.ledger.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))

        await asyncio.wait_for(ping(), DATABASE_CHECK_TIMEOUT)
        return True

    def _count_http_errors(self) -> None:
        """Meter both of discord.py's HTTP entry points: the bot's REST client, and the webhook
        adapter that answers interactions (a context variable the tasks started from here
        inherit). Errors are counted by status code; each interaction's first answer (its
        callback) is timed from its arrival."""
        http = self.http
        request = http.request

        async def metered(route: Route, **kwargs: Any) -> Any:
            return await self._metered(request(route, **kwargs), route)

        http.request = metered  # type: ignore[method-assign]
        async_context.set(_MeteredAdapter(self))

    async def _metered(self, call: Awaitable[T], route: Route) -> T:
        try:
            return await call
        except discord.HTTPException as exc:
            self.metrics.discord_errors.labels(code=str(exc.status)).inc()
            raise
        finally:
            found = _CALLBACK.search(route.url)
            if found:
                start = self._received.pop(int(found.group(1)), None)
                if start is not None:
                    self.metrics.first_answer_seconds.observe(time.monotonic() - start)

    async def update_metrics(self) -> None:
        """Keep gauges and engine histograms current; also measures event-loop lag."""
        while True:
            before = time.monotonic()
            await asyncio.sleep(METRICS_INTERVAL)
            self.metrics.loop_lag_seconds.observe(
                max(0.0, time.monotonic() - before - METRICS_INTERVAL)
            )
            self.refresh_metrics()

    def refresh_metrics(self) -> None:
        metrics, engine = self.metrics, self.engine
        metrics.queue_depth.set(engine.queue_depth)
        metrics.running.set(len(engine.running))
        stats = engine.stats
        new = min(stats.batches - self._batches_seen, len(stats.batch_sizes))
        for size in list(stats.batch_sizes)[len(stats.batch_sizes) - new :]:
            metrics.batch_size.observe(size)
        self._batches_seen = stats.batches
        # Received times of interactions never answered through REST (none in practice).
        cutoff = time.monotonic() - 900
        for key in [k for k, v in self._received.items() if v < cutoff]:
            del self._received[key]

    @property
    def imagine_tree(self) -> ImagineTree:
        tree = self.tree
        assert isinstance(tree, ImagineTree)
        return tree

    async def setup_hook(self) -> None:
        from .cogs import COGS  # imported here: cogs read the bot's types at run time

        self.add_dynamic_items(RerollButton, DeleteButton, CancelButton)
        for cog in COGS:
            await self.add_cog(cog(self))
        await self.sync_commands()

    async def sync_commands(self) -> None:
        """Register commands in the configured guilds (instant), else globally."""
        guild_ids = self.config.discord.guild_ids
        if not guild_ids:
            synced = await self.tree.sync()
            log.info("synced %d global commands", len(synced))
            return
        for guild_id in guild_ids:
            guild = discord.Object(guild_id)
            self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
            log.info("synced %d commands to guild %d", len(synced), guild_id)

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        # Every interaction id is a fresh reading of Discord's clock (token deadlines).
        self.discord_clock.observe_snowflake(interaction.id)
        with contextlib.suppress(Exception):
            self._received.setdefault(interaction.id, time.monotonic())

    async def on_ready(self) -> None:
        log.info("connected as %s to %d guild(s)", self.user, len(self.guilds))
