"""`ImagineTree`: the one place that turns an error into an answer to the user.

Slash commands reach `on_error` through discord.py; button callbacks (which discord.py would
only log) are routed here by `presses.py`. The answer is always ephemeral and never a
traceback: unexpected errors are logged with a short id the user can quote.
"""

from __future__ import annotations

import logging
from typing import Any

import discord
from discord import app_commands

from ..errors import RateLimited, Refusal, describe, unwrap
from ..ledger import LedgerError
from ..services import host_of

__all__ = ["ImagineTree", "rate_limited", "reply_privately", "report"]

log = logging.getLogger(__name__)


async def reply_privately(interaction: discord.Interaction[Any], text: str) -> None:
    """Answer `interaction` with an ephemeral `text`, however far it has been answered.

    After an ephemeral "thinking" defer the follow-up fills that message (no edit spent).
    """
    if not interaction.response.is_done():
        await interaction.response.send_message(text, ephemeral=True)
    else:
        await interaction.followup.send(text, ephemeral=True)


def rate_limited(interaction: discord.Interaction[Any]) -> RateLimited | None:
    """Count one command or press by the interaction's user; the refusal when over the limit."""
    wait = host_of(interaction).services.rate_limit.hit(interaction.user.id)
    return None if wait is None else RateLimited.after(wait)


async def report(interaction: discord.Interaction[Any], error: BaseException) -> None:
    """Tell the user what went wrong (ephemeral); log what was unexpected."""
    message = describe(error)
    cause = unwrap(error)  # discord.py wraps what callbacks raise
    if isinstance(cause, Refusal):
        metrics = host_of(interaction).services.metrics
        metrics.refusals.labels(reason=str(cause.reason)).inc()
    where = interaction.command.qualified_name if interaction.command else "component"
    if message.error_id is not None:
        log.error("error %s in %s", message.error_id, where, exc_info=error)
    elif isinstance(cause, LedgerError):  # the operator must hear why, not only the user
        log.error("%s for user %s: the database failed: %s", where, interaction.user.id, cause)
    else:
        log.info("refused %s for user %s: %s", where, interaction.user.id, message.text)
    try:
        await reply_privately(interaction, message.text)
    except discord.HTTPException as exc:  # the interaction expired or was deleted
        log.warning("could not tell user %s about an error: %s", interaction.user.id, exc)


class ImagineTree(app_commands.CommandTree[Any]):
    async def interaction_check(self, interaction: discord.Interaction[Any]) -> bool:
        """Per-user rate limit for slash commands (`/imagine` checks its own, to record the
        refusal in the ledger; buttons check theirs in `presses.py`)."""
        command = interaction.command
        if command is not None and command.qualified_name == "imagine":
            return True
        limited = rate_limited(interaction)
        if limited is None:
            return True
        await report(interaction, limited)
        return False

    async def on_error(
        self, interaction: discord.Interaction[Any], error: app_commands.AppCommandError
    ) -> None:
        await report(interaction, error)
