"""Who moderates: Manage Server (or Administrator) in the interaction's permissions, or one of
the configured moderator roles. Moderator commands (`surface/checks.py`) and the job
buttons of other members' jobs (`jobs/actions.py`) ask the same question here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import discord

__all__ = ["is_moderator"]


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
