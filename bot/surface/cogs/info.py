"""`/info`: the user's own allowance, when it refills, their jobs in flight, and the prompt
shorthands `/imagine` reads; `/models`: the models to choose from."""

from __future__ import annotations

from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from ...presentation.render import info_text, models_text
from ...services import Services

__all__ = ["InfoCog", "prompt_tips"]


def prompt_tips(most: int, *, describing: tuple[str, ...]) -> str:
    """The shorthands `/imagine` reads (`jobs/admission.py`), with this bot's maximum."""
    lines = [
        "**Prompt tips**",
        f"- `a {{red, blue}} car` makes one job per choice (up to {most}), each charged as usual.",
        "- `--no plants, people` adds those words to the negative prompt.",
    ]
    if describing:  # the prompt styles offered
        tags = " (`style:tags` for danbooru tags)" if "tags" in describing[1:] else ""
        lines.append(f"- `/describe` a picture for four prompts to start from{tags}.")
    return "\n".join(lines)


class InfoCog(commands.Cog):
    def __init__(self, services: Services) -> None:
        self.services = services

    @app_commands.command(name="info", description="Your image allowance and your jobs")
    @app_commands.guild_only()
    async def info(self, interaction: discord.Interaction[Any]) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        ledger = self.services.ledger
        status = await ledger.user_status(interaction.guild_id or 0, interaction.user.id)
        config = self.services.config
        tips = prompt_tips(
            min(config.quota.max_permutations, config.quota.max_queued_per_user),
            describing=config.engine.describe.styles,
        )
        await interaction.followup.send(f"{info_text(status)}\n\n{tips}", ephemeral=True)

    @app_commands.command(name="models", description="The models you can choose, and their LoRAs")
    @app_commands.guild_only()
    async def models(self, interaction: discord.Interaction[Any]) -> None:
        # From memory (no database): answered at once, within Discord's 3 s.
        text = models_text(self.services.engine.models())
        await interaction.response.send_message(text, ephemeral=True)
