"""`ImagineBot`: the discord.py client: intents, the command tree, `setup_hook`, nothing else.

`app.py` builds it, then `attach`es the process's `Services` and job actions before login;
`setup_hook` (run by discord.py after the token is accepted) registers the persistent
buttons (a press comes back through `press`), adds the cogs and syncs the slash commands.
Nothing here opens a database or loads a model (discord.py's `examples/advanced_startup.py`
pattern).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from ..presentation.buttons import JobButton
from ..services import JobActions, Press, Services
from . import presses
from .checks import declared_rules_kept
from .cogs import DescribeButton, make_cogs
from .tree import ImagineTree

__all__ = ["ImagineBot"]

log = logging.getLogger(__name__)


class ImagineBot(commands.AutoShardedBot):
    """Slash commands only: no message content, no member list, no prefix commands."""

    def __init__(
        self,
        *,
        guild_ids: tuple[int, ...] = (),
        guild_ready_timeout: float = 2.0,
        shard_count: int | None = None,
        shard_ids: tuple[int, ...] | None = None,
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
            # None: the shards Discord recommends, all in this process; else this process's
            # share of `shard_count` (several processes on one database: `[discord]`).
            shard_count=shard_count,
            shard_ids=list(shard_ids) if shard_ids else None,
        )
        self.guild_ids = guild_ids
        self._services: Services | None = None
        self._job_actions: JobActions | None = None
        self._ready_overdue = False  # READY did not come in time: not healthy until it does

    def attach(self, services: Services, job_actions: JobActions) -> None:
        """Hand the bot what its handlers use; must happen before `login`."""
        self._services = services
        self._job_actions = job_actions

    @property
    def services(self) -> Services:
        if self._services is None:
            raise RuntimeError("ImagineBot.attach() was not called before login")
        return self._services

    @property
    def job_actions(self) -> JobActions:
        if self._job_actions is None:
            raise RuntimeError("ImagineBot.attach() was not called before login")
        return self._job_actions

    async def press(self, interaction: discord.Interaction[Any], press: Press) -> None:
        """A job button's press (`services.ServiceHost`): answered by `presses.py`."""
        await presses.answer(self.job_actions, interaction, press)

    # -- what `services.Channels` asks of the client -----------------------------------------

    def partial_webhook(self, application_id: int, token: str) -> discord.Webhook:
        return discord.Webhook.partial(application_id, token, client=self)

    def gateway_connected(self) -> bool:
        """Every shard's websocket is open (`is_ready()` is not: it waits for guild chunks)."""
        shards = self.shards
        return (
            not self.is_closed()
            and bool(shards)
            and not any(shard.is_closed() for shard in shards.values())
        )

    def ready(self) -> bool:
        """The health check's view of the gateway: connected, and READY not overdue."""
        return self.gateway_connected() and not self._ready_overdue

    async def watch_ready(self, ready_within: float) -> None:
        """Reconnect every shard while READY does not come within `ready_within` seconds.

        discord.py waits for READY forever on a connection that took its IDENTIFY and then
        fell silent; a bot stuck like that is up but answers nothing.
        """
        while not self.is_closed():
            try:
                await asyncio.wait_for(self.wait_until_ready(), ready_within)
                self._ready_overdue = False
                return
            except TimeoutError:
                self._ready_overdue = True
                shards = list(self.shards.values())
                log.warning(
                    "no READY from Discord within %g s: reconnecting %d shard(s)",
                    ready_within,
                    len(shards),
                )
                for shard in shards:
                    await shard.reconnect()

    # -- discord.py hooks --------------------------------------------------------------------

    async def setup_hook(self) -> None:
        self.add_dynamic_items(JobButton, DescribeButton)
        for cog in make_cogs(self.services, self.job_actions):
            await self.add_cog(cog)
        for command in self.tree.walk_commands():
            if isinstance(command, app_commands.Command):  # declared to Discord: checked too
                command.add_check(declared_rules_kept)
        # Commands are synced by `app.py` once the model has loaded, not here at login.

    async def sync_commands(self) -> None:
        """Register commands in the configured guilds (instant), else globally."""
        if not self.guild_ids:
            synced = await self.tree.sync()
            log.info("synced %d global commands", len(synced))
            return
        for guild_id in self.guild_ids:
            guild = discord.Object(guild_id)
            self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
            log.info("synced %d commands to guild %d", len(synced), guild_id)

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        # Every interaction id is a fresh reading of Discord's clock (token deadlines).
        self.services.clock.observe_snowflake(interaction.id)

    async def on_ready(self) -> None:
        log.info("connected as %s to %d guild(s)", self.user, len(self.guilds))
