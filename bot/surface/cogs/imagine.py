"""`/imagine` and `/inpaint`: declares the options with the operator's own limits (Discord
checks them before sending, and the engine checks them again) and hands the request to the
job service.

The command is built per bot from the engine's `Limits`, so an operator's `max_steps = 80`
is what Discord offers; this module has no `from __future__ import annotations` because
discord.py reads the option ranges from the annotations at class creation.
"""

from collections.abc import Sequence
from typing import Any, Literal

import discord
from discord import app_commands
from discord.ext import commands

from engine import ASPECT_RATIOS, MAX_SEED, MAX_STRENGTH, MIN_STRENGTH, Limits, Shape
from engine.fixing import FIX_CHOICES

from ...images.pictures import PictureRef
from ...services import JobActions
from ...services.options import MAX_PROMPT, ImagineOptions

__all__ = ["make_imagine_cog"]

_SHAPES = Literal[tuple(shape.value for shape in Shape)]  # type: ignore[valid-type]
_ASPECTS = Literal[ASPECT_RATIOS]  # type: ignore[valid-type]
#: `quality:fast` asks for the model's step cache (`[models.<name>] cache`).
_QUALITIES = Literal["full", "fast"]
#: `fix:` fixes faces, hands or both once the images are made (`[fix]`'s detectors).
_FIXES = Literal[tuple(FIX_CHOICES)]  # type: ignore[valid-type]


#: Discord's limits on autocomplete answers: 25 choices, names of 100 characters.
MAX_CHOICES = 25
MAX_CHOICE_NAME = 100


def model_choices(
    models: Sequence[tuple[str, str]], current: str
) -> list[app_commands.Choice[str]]:
    """Models whose name (or description) contains what the user typed so far, names first."""
    typed = current.strip().lower()
    named = [m for m in models if typed in m[0].lower()]
    described = [m for m in models if m not in named and typed and typed in m[1].lower()]
    return [
        app_commands.Choice(name=(f"{n} — {d}" if d else n)[:MAX_CHOICE_NAME], value=n)
        for n, d in [*named, *described][:MAX_CHOICES]
    ]


def make_imagine_cog(
    limits: Limits, jobs: JobActions, models: Sequence[tuple[str, str]] = ()
) -> commands.Cog:
    """The `/imagine` cog with option ranges taken from `limits`; `models` (name,
    description) feed the `model` option's autocomplete (the engine checks the name)."""
    max_steps, max_count, max_guidance = limits.max_steps, limits.max_count, limits.max_guidance

    class ImagineCog(commands.Cog):
        @app_commands.command(
            name="imagine", description="Make images from a text prompt (and a picture)"
        )
        @app_commands.describe(
            prompt="What the image should show",
            negative="What the image should not show",
            seed="Start from this seed to repeat an image (random when empty)",
            steps="Denoising steps: more is slower and often finer",
            guidance="How closely to follow the prompt",
            size="Shape of the image",
            ar="Aspect ratio (width:height), at the model's usual number of pixels",
            count="How many images (each counts against your allowance)",
            image="A picture to start from (PNG, JPEG or WebP)",
            strength="With an image: how much of it may change (0.05 to 1; 0.6 by default)",
            model="The model to use (see /models); the server's default when empty",
            quality="fast: quicker, slightly different images (on models that offer it)",
            fix="Fix faces, hands or both once made (where the server has a detector)",
        )
        @app_commands.guild_only()
        async def imagine(
            self,
            interaction: discord.Interaction[Any],
            prompt: app_commands.Range[str, 1, MAX_PROMPT],
            negative: app_commands.Range[str, 1, MAX_PROMPT] | None = None,
            seed: app_commands.Range[int, 0, MAX_SEED] | None = None,
            steps: app_commands.Range[int, 1, max_steps] | None = None,
            guidance: app_commands.Range[float, 0.0, max_guidance] | None = None,
            size: _SHAPES | None = None,
            ar: _ASPECTS | None = None,
            count: app_commands.Range[int, 1, max_count] = 1,
            image: discord.Attachment | None = None,
            strength: app_commands.Range[float, MIN_STRENGTH, MAX_STRENGTH] | None = None,
            model: app_commands.Range[str, 1, 64] | None = None,
            quality: _QUALITIES | None = None,
            fix: _FIXES | None = None,
        ) -> None:
            options = ImagineOptions(
                prompt=prompt,
                negative=negative or "",
                seed=seed,
                steps=steps,
                guidance=guidance,
                shape=size,  # the engine refuses a forged one (Discord offers choices)
                count=count,
                aspect=ar,
                picture=None
                if image is None
                else PictureRef(url=image.url, filename=image.filename, size=image.size),
                strength=strength,
                model=model,
                fast=quality == "fast",
                fix=FIX_CHOICES.get(fix, (fix,)) if fix else (),  # checked by `problem`
            )
            await jobs.imagine(interaction, options)

        @app_commands.command(
            name="inpaint", description="Make part of a picture anew: where its mask is white"
        )
        @app_commands.describe(
            image="The picture (PNG, JPEG or WebP)",
            mask="The same picture's size in black and white: white where it should change",
            prompt="What the white part should show",
            model="The model to use (see /models); the server's default when empty",
        )
        @app_commands.guild_only()
        async def inpaint(
            self,
            interaction: discord.Interaction[Any],
            image: discord.Attachment,
            mask: discord.Attachment,
            prompt: app_commands.Range[str, 1, MAX_PROMPT],
            model: app_commands.Range[str, 1, 64] | None = None,
        ) -> None:
            await jobs.inpaint(
                interaction,
                PictureRef(url=image.url, filename=image.filename, size=image.size),
                PictureRef(url=mask.url, filename=mask.filename, size=mask.size),
                prompt,
                model,
            )

        @imagine.autocomplete("model")
        async def model_autocomplete(
            self, interaction: discord.Interaction[Any], current: str
        ) -> list[app_commands.Choice[str]]:
            return model_choices(models, current)

    return ImagineCog()
