"""Buttons that keep working after a restart: Reroll, Delete (on results), Cancel (on progress).

Each `custom_id` is `imagine:<action>:<job id>`; the job is looked up in the ledger when the
button is pressed, so no view object has to survive in memory (discord.py's `DynamicItem`).
discord.py only logs errors raised in item callbacks; these route them to the command tree,
the one place that answers users about errors.
"""

from __future__ import annotations

import re
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import discord

if TYPE_CHECKING:
    from .client import ImagineBot

__all__ = ["CancelButton", "DeleteButton", "RerollButton", "progress_view", "result_view"]


async def _guarded(interaction: discord.Interaction[Any], work: Coroutine[Any, Any, None]) -> None:
    """Run a button's work unless its presser is over the rate limit; report any error."""
    bot: ImagineBot = interaction.client
    limited = bot.rate_limited(interaction.user.id)
    if limited is not None:
        work.close()  # never started
        await bot.imagine_tree.report(interaction, limited)
        return
    try:
        await work
    except Exception as exc:
        await bot.imagine_tree.report(interaction, exc)


class RerollButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"imagine:reroll:(?P<job>[0-9]+)"
):
    """Same options, new seed: the requester or a moderator; charged to whoever presses it."""

    def __init__(self, job_id: int) -> None:
        super().__init__(
            discord.ui.Button(
                label="Reroll",
                emoji="\N{GAME DIE}",
                style=discord.ButtonStyle.secondary,
                custom_id=f"imagine:reroll:{job_id}",
            )
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str]
    ) -> RerollButton:
        return cls(int(match["job"]))

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        bot: ImagineBot = interaction.client
        await _guarded(interaction, bot.jobs.reroll(interaction, self.job_id))


class DeleteButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"imagine:delete:(?P<job>[0-9]+)"
):
    """Remove a result: the requester or a moderator only."""

    def __init__(self, job_id: int) -> None:
        super().__init__(
            discord.ui.Button(
                label="Delete",
                emoji="\N{WASTEBASKET}",
                style=discord.ButtonStyle.danger,
                custom_id=f"imagine:delete:{job_id}",
            )
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str]
    ) -> DeleteButton:
        return cls(int(match["job"]))

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        bot: ImagineBot = interaction.client
        await _guarded(interaction, bot.jobs.delete(interaction, self.job_id))


class CancelButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"imagine:cancel:(?P<job>[0-9]+)"
):
    """Stop a queued or running job: the requester or a moderator only."""

    def __init__(self, job_id: int) -> None:
        super().__init__(
            discord.ui.Button(
                label="Cancel",
                style=discord.ButtonStyle.secondary,
                custom_id=f"imagine:cancel:{job_id}",
            )
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str]
    ) -> CancelButton:
        return cls(int(match["job"]))

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        bot: ImagineBot = interaction.client
        await _guarded(interaction, bot.jobs.cancel(interaction, self.job_id))


def result_view(job_id: int) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(RerollButton(job_id))
    view.add_item(DeleteButton(job_id))
    return view


def progress_view(job_id: int) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(CancelButton(job_id))
    return view
