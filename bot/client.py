"""`ImagineBot`: the discord.py client, given its long-lived resources by `app.py`.

`setup_hook` (run by discord.py after the token is accepted) registers the persistent
buttons, adds the cogs and syncs the slash commands; nothing here opens a database or loads
a model (discord.py's `examples/advanced_startup.py` pattern).
"""

from __future__ import annotations

import logging

import discord
from discord.ext import commands

from engine import Engine

from .buttons import CancelButton, DeleteButton, RerollButton
from .clock import DiscordClock
from .config import BotConfig
from .jobs import JobService
from .ledger import Ledger
from .moderation import Moderation
from .throttle import EditThrottle
from .tree import ImagineTree

__all__ = ["ImagineBot"]

log = logging.getLogger(__name__)


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
        self.jobs = JobService(self)

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

    async def on_ready(self) -> None:
        log.info("connected as %s to %d guild(s)", self.user, len(self.guilds))
