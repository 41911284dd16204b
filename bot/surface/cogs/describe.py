"""`/describe image:<attachment> [style]`: four candidate prompts for a picture, each with an
**Imagine** button that runs `/imagine` with it, at the picture's aspect ratio, for whoever
presses it (charged to them as any `/imagine`). `style`: prose (the describe model's
sentences) or tags (the tagger's danbooru tags, for anime models); by default the first the
operator configured. A style that is off is refused privately, before anything runs.

The picture is checked and fetched as `/imagine`'s (`images/pictures.py`); the engine's
describe model and the tagger run on a thread of their own (`engine/describe.py`,
`engine/tagger.py`), never on the event loop. Their prompts are not moderated as they are
shown (privately, to the one who asked): an Imagine press is an `/imagine`, refused by the
server's blocked words as a typed prompt is; a tagger's ratings never reach a prompt.
Describing is not charged as images: the command tree's per-member rate limit
(`[moderation] commands_per_minute`) counts it, as any command; an Imagine press is counted
by the admission of the `/imagine` it makes. The buttons survive a restart: each names only
its prompt's number and the aspect ratio, and a press reads the prompt from its message
(`presentation/describe.py`).

A result's **Describe** button (`Action.DESCRIBE`) gets the same answer for the image it names
(`describe_result`): the job actions check the press and give the kept full-size picture, as
for Upscale or Vary; nothing is charged, and the press counts against the presser's rate
limit as every press does (`surface/presses.py`).
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from engine import ASPECT_RATIOS

from ...errors import NotAllowed
from ...images.pictures import PictureRef, fetch_picture
from ...ledger import JobRef
from ...presentation.describe import BUTTON_ID, closest_ratio, describe_text, prompts_of
from ...services import Action, ImagineOptions, JobActions, Services, host_of
from ..tree import report

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["DescribeButton", "DescribeCog", "describe_result", "describe_view"]

log = logging.getLogger(__name__)

#: The answer when `[describe] model` and `tagger` are empty.
OFF = "Describing pictures is off on this bot (its operator set no describe model nor tagger)."
#: The answer when the style asked for is off.
STYLE_OFF = {
    "prose": "Prompts in sentences are off on this bot (its operator set no describe model): "
    "leave style empty or pick tags.",
    "tags": "Tag-style prompts are off on this bot (its operator set no tagger): leave style "
    "empty or pick prose.",
}


class DescribeButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=BUTTON_ID,
):
    """**Imagine n** under a `/describe` answer: `/imagine` with prompt n of its message."""

    def __init__(self, number: int, ratio: str) -> None:
        super().__init__(
            discord.ui.Button(
                label=f"Imagine {number}",
                style=discord.ButtonStyle.primary,
                custom_id=f"imagine-describe:{number}:{ratio}",
            )
        )
        self.number = number
        self.ratio = ratio

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str]
    ) -> DescribeButton:
        return cls(int(match["number"]), match["ratio"])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        # The /imagine's admission counts the press against the presser's rate limit.
        try:
            message = interaction.message
            prompt = prompts_of(message.content if message is not None else "").get(self.number)
            if prompt is None or self.ratio not in ASPECT_RATIOS:  # forged onto a message
                raise NotAllowed("This button does not belong to a /describe answer.")
            options = ImagineOptions(prompt=prompt, aspect=self.ratio)
            await host_of(interaction).job_actions.imagine(interaction, options)
        except Exception as exc:
            await report(interaction, exc)


def describe_view(count: int, ratio: str) -> discord.ui.View:
    """An Imagine button for each of `count` prompts."""
    view = discord.ui.View(timeout=None)
    for number in range(1, count + 1):
        view.add_item(DescribeButton(number, ratio))
    return view


async def _answer(
    services: Services,
    interaction: discord.Interaction[Any],
    picture: Image,
    name: str,
    style: str = "",
) -> None:
    """Describe `picture` (called `name` in the answer) in `style` ("": the default) and
    answer the deferred `interaction` privately with its prompts, an Imagine button each."""
    prompts = await services.engine.describe(picture, style)  # on the describer's thread
    if not prompts:
        raise NotAllowed("The describe model found nothing to say about that picture.")
    ratio = closest_ratio(*picture.size)
    log.info("described a picture for user %s: %d prompts", interaction.user.id, len(prompts))
    await interaction.followup.send(
        describe_text(name, prompts, ratio),
        view=describe_view(len(prompts), ratio),
        ephemeral=True,
    )


async def describe_result(
    actions: JobActions, interaction: discord.Interaction[Any], job: JobRef, index: int
) -> None:
    """A result's Describe press: `/describe`'s answer for image `index` of `job`, from the
    picture the bot keeps (the job actions check the press and read it)."""
    services = host_of(interaction).services
    if not services.config.engine.describe.styles:  # forged onto a result
        await interaction.response.send_message(OFF, ephemeral=True)
        return
    await interaction.response.defer(ephemeral=True, thinking=True)
    picture = await actions.picture(interaction, job, index, Action.DESCRIBE)
    await _answer(services, interaction, picture, f"image {index + 1} of job #{job.id}")


class DescribeCog(commands.Cog):
    def __init__(self, services: Services) -> None:
        self.services = services

    @app_commands.command(name="describe", description="Four prompts that could make a picture")
    @app_commands.describe(
        image="The picture to describe (PNG, JPEG or WebP)",
        style="Sentences, or danbooru tags for anime models (default: the bot's first)",
    )
    @app_commands.choices(
        style=[
            app_commands.Choice(name="prose (sentences)", value="prose"),
            app_commands.Choice(name="tags (danbooru tags, for anime models)", value="tags"),
        ]
    )
    @app_commands.guild_only()
    async def describe(
        self,
        interaction: discord.Interaction[Any],
        image: discord.Attachment,
        style: app_commands.Choice[str] | None = None,
    ) -> None:
        s = self.services
        styles = s.config.engine.describe.styles
        if not styles or (style is not None and style.value not in styles):
            refusal = STYLE_OFF[style.value] if styles and style is not None else OFF
            await interaction.response.send_message(refusal, ephemeral=True)
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        picture = await fetch_picture(
            PictureRef(url=image.url, filename=image.filename, size=image.size),
            api_base_url=s.config.discord.api_base_url,
            max_mb=s.config.images.max_picture_mb,
        )
        await _answer(s, interaction, picture, image.filename, style.value if style else "")
