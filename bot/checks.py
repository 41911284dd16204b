"""Who counts as a moderator, checked by the bot on every use.

`default_permissions` only asks Discord to hide a command; anyone can still send the
interaction (a forged payload, or a server admin re-enabling it for everyone). So moderator
commands and buttons check here: Manage Server (or Administrator) in the interaction's
permissions, or one of the configured moderator roles.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import discord
from discord import app_commands

from .errors import NotModerator
from .services import host_of

__all__ = ["is_moderator", "moderator_only"]

T = TypeVar("T")


def _role_ids(member: discord.Member) -> set[int]:
    try:
        return {role.id for role in member.roles}
    except AttributeError:  # guild not cached yet: discord.py gave a partial guild
        return set()


def is_moderator(interaction: discord.Interaction[Any], role_ids: Iterable[int]) -> bool:
    user = interaction.user
    if not isinstance(user, discord.Member):  # DMs have no moderators
        return False
    perms = interaction.permissions
    if perms.administrator or perms.manage_guild:
        return True
    return bool(_role_ids(user) & set(role_ids))


def moderator_only() -> Callable[[T], T]:
    """`app_commands.check` raising `NotModerator`, answered by the tree's error handler."""

    async def predicate(interaction: discord.Interaction[Any]) -> bool:
        role_ids = host_of(interaction).services.config.discord.moderator_role_ids
        if not is_moderator(interaction, role_ids):
            raise NotModerator()
        return True

    return app_commands.check(predicate)
