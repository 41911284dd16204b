"""Rules the bot declares to Discord, checked again by the bot on every use.

Discord enforces what a command declares (hidden from members, servers only, option ranges
and lengths), but anyone can still send an interaction it would not (a forged payload, or a
server admin re-enabling a command for everyone), and discord.py does not check them on the
bot's side. So:

- `moderator_only`: Manage Server (or Administrator) in the interaction's permissions, or one
  of the configured moderator roles (`moderation/moderators.py`), for moderator commands;
- `declared_rules_kept`: added to every slash command at start-up: a guild-only command from
  a DM, or an option outside its declared range or length, is refused with a clear message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import discord
from discord import app_commands

from ..errors import NotModerator, OutsideDeclaredRules
from ..moderation.moderators import is_moderator
from ..services import host_of

__all__ = ["declared_rules_kept", "moderator_only"]

T = TypeVar("T")


def moderator_only() -> Callable[[T], T]:
    """`app_commands.check` raising `NotModerator`, answered by the tree's error handler."""

    async def predicate(interaction: discord.Interaction[Any]) -> bool:
        role_ids = host_of(interaction).services.config.discord.moderator_role_ids
        if not is_moderator(interaction, role_ids):
            raise NotModerator()
        return True

    return app_commands.check(predicate)


def _guild_only(command: app_commands.Command[Any, ..., Any] | app_commands.Group) -> bool:
    node: Any = command
    while node is not None:
        if node.guild_only:
            return True
        node = node.parent
    return False


def _broken_rule(parameter: app_commands.Parameter, value: object) -> str | None:
    """Why `value` breaks what `parameter` declared to Discord, else None."""
    choices = [choice.value for choice in parameter.choices]
    if choices and value not in choices:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:39] + "…"
        listed = ", ".join(str(c) for c in choices)
        return f"`{parameter.display_name}` must be one of {listed}, not {shown}."
    low, high = parameter.min_value, parameter.max_value
    if isinstance(value, str):
        size, unit = len(value), " characters long"
    elif isinstance(value, int | float) and not isinstance(value, bool):
        size, unit = value, ""
    else:
        return None
    if (low is None or size >= low) and (high is None or size <= high):
        return None
    if low is not None and high is not None:
        bounds = f"between {low:g} and {high:g}"
    else:
        bounds = f"at least {low:g}" if low is not None else f"at most {high:g}"
    shown = "" if unit else f", not {value:g}" if isinstance(value, float) else f", not {value}"
    return f"`{parameter.display_name}` must be {bounds}{unit}{shown}."


async def declared_rules_kept(interaction: discord.Interaction[Any]) -> bool:
    """A check for every command: what it declared to Discord holds for this interaction."""
    command = interaction.command
    if not isinstance(command, app_commands.Command):
        return True
    if interaction.guild_id is None and _guild_only(command):
        raise app_commands.NoPrivateMessage()
    for parameter in command.parameters:
        value = getattr(interaction.namespace, parameter.name, None)
        problem = _broken_rule(parameter, value) if value is not None else None
        if problem is not None:
            raise OutsideDeclaredRules(problem)
    return True
