"""`/usage [days]`: moderators see images per day as a chart, top users and refusals."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from ...images.chart import usage_chart
from ...presentation.render import usage_embed
from ...services import Services
from ..checks import moderator_only

__all__ = ["UsageCog"]


class UsageCog(commands.Cog):
    def __init__(self, services: Services) -> None:
        self.services = services

    @app_commands.command(name="usage", description="Images per day, top users and refusals")
    @app_commands.describe(days="How many days back (today included)")
    @app_commands.guild_only()
    @app_commands.default_permissions(manage_guild=True)
    @moderator_only()
    async def usage(
        self,
        interaction: discord.Interaction[Any],
        days: app_commands.Range[int, 1, 90] = 7,
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        summary = await self.services.ledger.usage_summary(interaction.guild_id or 0, days)
        png = await asyncio.to_thread(usage_chart, summary, days)  # Pillow off the event loop
        await interaction.followup.send(
            embed=usage_embed(summary, days),
            file=discord.File(io.BytesIO(png), "usage.png"),
            ephemeral=True,
        )
