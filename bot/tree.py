"""`ImagineTree`: the one place that turns an error into an answer to the user.

Slash commands reach `on_error` through discord.py; button callbacks (which discord.py would
only log) are routed here by `buttons.py`. The answer is always ephemeral and never a
traceback: unexpected errors are logged with a short id the user can quote.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands

from .errors import Refusal, describe

if TYPE_CHECKING:
    from .client import ImagineBot

__all__ = ["ImagineTree", "reply_privately"]

log = logging.getLogger(__name__)


async def reply_privately(interaction: discord.Interaction[Any], text: str) -> None:
    """Answer `interaction` with an ephemeral `text`, however far it has been answered.

    After an ephemeral "thinking" defer the follow-up fills that message (no edit spent).
    """
    if not interaction.response.is_done():
        await interaction.response.send_message(text, ephemeral=True)
    else:
        await interaction.followup.send(text, ephemeral=True)


def _unwrap_refusal(error: BaseException) -> Refusal | None:
    while isinstance(error, app_commands.CommandInvokeError) and error.original is not None:
        error = error.original
    return error if isinstance(error, Refusal) else None


class ImagineTree(app_commands.CommandTree["ImagineBot"]):
    async def interaction_check(self, interaction: discord.Interaction[ImagineBot]) -> bool:
        """Per-user rate limit for slash commands (`/imagine` checks its own, to record the
        refusal in the ledger; buttons check theirs in `buttons.py`)."""
        command = interaction.command
        if command is not None and command.qualified_name == "imagine":
            return True
        limited = interaction.client.rate_limited(interaction.user.id)
        if limited is None:
            return True
        await self.report(interaction, limited)
        return False

    async def on_error(
        self, interaction: discord.Interaction[ImagineBot], error: app_commands.AppCommandError
    ) -> None:
        await self.report(interaction, error)

    async def report(self, interaction: discord.Interaction[Any], error: BaseException) -> None:
        """Tell the user what went wrong (ephemeral); log what was unexpected."""
        message = describe(error)
        refusal = _unwrap_refusal(error)
        if refusal is not None:
            interaction.client.metrics.refusals.labels(reason=str(refusal.reason)).inc()
        where = interaction.command.qualified_name if interaction.command else "component"
        if message.error_id is not None:
            log.error("error %s in %s", message.error_id, where, exc_info=error)
        else:
            log.info("refused %s for user %s: %s", where, interaction.user.id, message.text)
        try:
            await reply_privately(interaction, message.text)
        except discord.HTTPException as exc:  # the interaction expired or was deleted
            log.warning("could not tell user %s about an error: %s", interaction.user.id, exc)
