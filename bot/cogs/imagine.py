"""`/imagine`: declares the options (Discord checks the limits before sending) and hands the
request to the job service. No logic lives here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import discord
from discord import app_commands
from discord.ext import commands

from engine import MAX_SEED

from ..options import ImagineOptions, parse_shape

if TYPE_CHECKING:
    from ..client import ImagineBot

__all__ = ["ImagineCog"]

# Declared limits match the engine's defaults; the engine enforces the operator's own
# (possibly tighter) `[engine]` limits again and explains any refusal.
MAX_PROMPT = 1000
MAX_STEPS = 50
MAX_GUIDANCE = 30.0
MAX_COUNT = 4


class ImagineCog(commands.Cog):
    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot

    @app_commands.command(name="imagine", description="Make images from a text prompt")
    @app_commands.describe(
        prompt="What the image should show",
        negative="What the image should not show",
        seed="Start from this seed to repeat an image (random when empty)",
        steps="Denoising steps: more is slower and often finer",
        guidance="How closely to follow the prompt",
        size="Shape of the image",
        count="How many images (each counts against your allowance)",
    )
    @app_commands.guild_only()
    async def imagine(
        self,
        interaction: discord.Interaction[ImagineBot],
        prompt: app_commands.Range[str, 1, MAX_PROMPT],
        negative: app_commands.Range[str, 1, MAX_PROMPT] | None = None,
        seed: app_commands.Range[int, 0, MAX_SEED] | None = None,
        steps: app_commands.Range[int, 1, MAX_STEPS] | None = None,
        guidance: app_commands.Range[float, 0.0, MAX_GUIDANCE] | None = None,
        size: Literal["square", "portrait", "landscape"] | None = None,
        count: app_commands.Range[int, 1, MAX_COUNT] = 1,
    ) -> None:
        options = ImagineOptions(
            prompt=prompt,
            negative=negative or "",
            seed=seed,
            steps=steps,
            guidance=guidance,
            shape=parse_shape(size),  # a forged size is refused, not a crash
            count=count,
        )
        await self.bot.jobs.imagine(interaction, options)
