"""`/info`: the user's own allowance, when it refills, and their jobs in flight."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from ..render import info_text

if TYPE_CHECKING:
    from ..client import ImagineBot

__all__ = ["InfoCog"]


class InfoCog(commands.Cog):
    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot

    @app_commands.command(name="info", description="Your image allowance and your jobs")
    @app_commands.guild_only()
    async def info(self, interaction: discord.Interaction[ImagineBot]) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        status = await self.bot.ledger.user_status(interaction.guild_id or 0, interaction.user.id)
        await interaction.followup.send(info_text(status), ephemeral=True)
