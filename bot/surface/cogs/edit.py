"""`/edit`: change a picture by saying what to change, on a model that edits by instruction.

The pictures are attachments, read like `/imagine`'s `image:` (only from Discord, size
limits, decoded off the event loop); the job service picks the first configured model that
edits when `model` is empty, and refuses a model that does not edit, naming those that do.
No `from __future__ import annotations`: discord.py reads the option ranges from the
annotations.
"""

from collections.abc import Sequence
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from engine import MAX_SEED

from ...images.pictures import PictureRef
from ...services import JobActions
from ...services.options import MAX_PROMPT, ImagineOptions
from .imagine import model_choices

__all__ = ["make_edit_cog"]


def _ref(attachment: discord.Attachment) -> PictureRef:
    return PictureRef(url=attachment.url, filename=attachment.filename, size=attachment.size)


def make_edit_cog(jobs: JobActions, models: Sequence[tuple[str, str]] = ()) -> commands.Cog:
    """The `/edit` cog; `models` (name, description) feed the `model` option's autocomplete."""

    class EditCog(commands.Cog):
        @app_commands.command(name="edit", description="Change a picture by saying what to change")
        @app_commands.describe(
            image="The picture to change (PNG, JPEG or WebP)",
            instruction="What to change, e.g. 'make it night' or 'remove the hat'",
            model="A model that edits (see /models); the first one when empty",
            seed="Start from this seed to repeat an edit (random when empty)",
            image2="Another picture, for models that edit with several",
            image3="A third picture, for models that edit with several",
        )
        @app_commands.guild_only()
        async def edit(
            self,
            interaction: discord.Interaction[Any],
            image: discord.Attachment,
            instruction: app_commands.Range[str, 1, MAX_PROMPT],
            model: app_commands.Range[str, 1, 64] | None = None,
            seed: app_commands.Range[int, 0, MAX_SEED] | None = None,
            image2: discord.Attachment | None = None,
            image3: discord.Attachment | None = None,
        ) -> None:
            pictures = [p for p in (image, image2, image3) if p is not None]
            options = ImagineOptions(
                prompt=instruction,
                seed=seed,
                model=model,
                references=tuple(_ref(p) for p in pictures),
            )
            await jobs.imagine(interaction, options)

        @edit.autocomplete("model")
        async def model_autocomplete(
            self, interaction: discord.Interaction[Any], current: str
        ) -> list[app_commands.Choice[str]]:
            return model_choices(models, current)

    return EditCog()
