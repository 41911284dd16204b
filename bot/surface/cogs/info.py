"""`/info`: the user's own allowance, when it refills, and their jobs in flight; `/models`:
the models to choose from."""

from __future__ import annotations

from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from ...presentation.render import info_text, models_text
from ...services import Services

__all__ = ["InfoCog"]


class InfoCog(commands.Cog):
    def __init__(self, services: Services) -> None:
        self.services = services

    @app_commands.command(name="info", description="Your image allowance and your jobs")
    @app_commands.guild_only()
    async def info(self, interaction: discord.Interaction[Any]) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        ledger = self.services.ledger
        status = await ledger.user_status(interaction.guild_id or 0, interaction.user.id)
        await interaction.followup.send(info_text(status), ephemeral=True)

    @app_commands.command(name="models", description="The models you can choose, and their LoRAs")
    @app_commands.guild_only()
    async def models(self, interaction: discord.Interaction[Any]) -> None:
        # From memory (no database): answered at once, within Discord's 3 s.
        text = models_text(self.services.engine.models())
        await interaction.response.send_message(text, ephemeral=True)
