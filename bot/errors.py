"""The bot's exceptions, and the one mapping from any error to a message a user may read.

Cogs and the job service raise; `ImagineTree.on_error` (see `surface/tree.py`) is the one
place that answers the interaction. Every message here is written for the user; nothing
internal (a traceback, a SQL error, an engine detail) is ever shown, only logged with an
error id.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import discord
from discord import app_commands

from engine import (
    Busy,
    Cancelled,
    EngineDead,
    EngineError,
    EngineUnavailable,
    GenerationFailed,
    InvalidRequest,
)
from engine import ShuttingDown as EngineShuttingDown

from .ledger import LedgerBusyError, LedgerError, RefusalReason

__all__ = [
    "BadSetting",
    "BotError",
    "NotAllowed",
    "NotModerator",
    "OutsideDeclaredRules",
    "RateLimited",
    "Refusal",
    "ShuttingDown",
    "UnknownJob",
    "UserMessage",
    "describe",
    "unwrap",
]


class BotError(Exception):
    """Base of the bot's own errors; `str(error)` is shown to the user as is."""


class Refusal(BotError):
    """An `/imagine` (or reroll) the bot turned down; recorded in the ledger with `reason`.

    `retry_at` says when trying again can succeed (the quota refills), shown as a Discord
    relative timestamp.
    """

    def __init__(
        self, reason: RefusalReason | str, message: str, retry_at: datetime | None = None
    ) -> None:
        if retry_at is not None:
            message = f"{message} You can make more {discord.utils.format_dt(retry_at, 'R')}."
        super().__init__(message)
        self.reason = reason
        self.retry_at = retry_at


class RateLimited(Refusal):
    """A user over `[moderation] commands_per_minute`; `retry_at` is when one more is allowed."""

    def __init__(self, retry_at: datetime) -> None:
        super().__init__(
            RefusalReason.RATE_LIMITED,
            "Slow down: you are sending commands too fast. "
            f"Try again {discord.utils.format_dt(retry_at, 'R')}.",
        )
        self.retry_at = retry_at

    @classmethod
    def after(cls, seconds: float) -> RateLimited:
        """Refused for `seconds` more (rounded up: never tell a user to retry too early)."""
        return cls(discord.utils.utcnow() + timedelta(seconds=math.ceil(seconds)))


class NotModerator(app_commands.CheckFailure, BotError):
    """A moderator command used by someone else (checked on the server, not only hidden)."""

    def __init__(self) -> None:
        super().__init__(
            "Only moderators (Manage Server, or a moderator role) can use this command."
        )


class OutsideDeclaredRules(app_commands.CheckFailure, BotError):
    """An option outside what the command declared to Discord: Discord would never send it,
    so the payload was forged (checked by the bot, not only declared)."""


class NotAllowed(BotError):
    """A button pressed by someone it is not for (delete or cancel another user's job)."""


class BadSetting(BotError):
    """A `/settings set` value that does not fit the setting; says what to type instead."""


class UnknownJob(BotError):
    """A button refers to a job the ledger does not know (deleted database, forged id)."""

    def __init__(self) -> None:
        super().__init__("That job no longer exists.")


class ShuttingDown(BotError):
    def __init__(self) -> None:
        super().__init__("The bot is restarting. Try again in a minute.")


@dataclass(frozen=True, slots=True)
class UserMessage:
    """What to tell the user, and the id logged with the traceback when it was unexpected."""

    text: str
    error_id: str | None = None  # set for unexpected errors: logged with the traceback


def unwrap(error: BaseException) -> BaseException:
    """discord.py wraps callback errors (`CommandInvokeError`, `TransformerError`...)."""
    while isinstance(error, app_commands.CommandInvokeError) and error.original is not None:
        error = error.original
    return error


def describe(error: BaseException) -> UserMessage:
    """The message for `error`, in priority order: ours, Discord's checks, engine, ledger."""
    error = unwrap(error)
    if isinstance(error, BotError):
        return UserMessage(str(error))
    if isinstance(error, app_commands.NoPrivateMessage):
        return UserMessage("This command works in servers only.")
    if isinstance(error, app_commands.MissingPermissions | app_commands.MissingAnyRole):
        return UserMessage("You are not allowed to use this command.")
    if isinstance(error, app_commands.CommandOnCooldown):
        return UserMessage(f"Slow down: try again in {error.retry_after:.0f} s.")
    if isinstance(error, app_commands.TransformerError):
        return UserMessage(f"{error.value!r} is not a valid value for that option.")
    if isinstance(error, app_commands.CheckFailure):
        return UserMessage("You are not allowed to use this command here.")
    if isinstance(error, InvalidRequest | Busy):
        return UserMessage(str(error))
    if isinstance(error, Cancelled):
        return UserMessage("The job was cancelled.")
    if isinstance(error, EngineShuttingDown):
        return UserMessage("The bot is restarting. Try again in a minute.")
    if isinstance(error, EngineUnavailable):
        return UserMessage(
            "The image engine cannot be reached right now. Try again in a few minutes."
        )
    if isinstance(error, EngineDead):
        return UserMessage("The image engine stopped. A moderator needs to restart the bot.")
    if isinstance(error, GenerationFailed):
        return UserMessage(f"Making the image failed: {error}")
    if isinstance(error, EngineError):
        return UserMessage(str(error))
    if isinstance(error, LedgerBusyError):
        return UserMessage("The bot is very busy right now. Try again in a few seconds.")
    if isinstance(error, LedgerError):
        return UserMessage(
            "The bot cannot record jobs right now, so nothing was made and nothing was "
            "charged. Try again later; if it lasts, tell a moderator."
        )
    if isinstance(error, discord.Forbidden):
        return UserMessage("I am missing a permission in this channel to do that.")
    error_id = secrets.token_hex(4)
    return UserMessage(f"Something went wrong on my side (error `{error_id}`).", error_id)
