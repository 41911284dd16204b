"""`/quota set|show|reset|block`: moderators manage per-user allowances.

Hidden from members by `default_permissions` and checked by the bot on every use
(`moderator_only`), since a hidden command can still be sent. Every change is written to the
ledger's audit log with the moderator's id.
"""

from __future__ import annotations

from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from ...presentation.render import info_text, quota_change_text
from ...services import Services
from ..checks import moderator_only

__all__ = ["QuotaCog"]

MAX_DAILY = 100_000


@app_commands.guild_only()
@app_commands.default_permissions(manage_guild=True)
class QuotaCog(commands.GroupCog, group_name="quota", group_description="Image allowances"):
    def __init__(self, services: Services) -> None:
        self.services = services
        super().__init__()

    @app_commands.command(name="set", description="Set a member's images per 24 hours")
    @app_commands.describe(user="Whose allowance", daily="Images per rolling 24 hours (0 blocks)")
    @moderator_only()
    async def set_(
        self,
        interaction: discord.Interaction[Any],
        user: discord.Member,
        daily: app_commands.Range[int, 0, MAX_DAILY],
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        change = await self.services.ledger.set_user_quota(
            interaction.guild_id or 0, user.id, daily, by=interaction.user.id
        )
        await interaction.followup.send(quota_change_text(change), ephemeral=True)

    @app_commands.command(name="show", description="A member's allowance and recent changes")
    @app_commands.describe(user="Whose allowance (yours when empty)")
    @moderator_only()
    async def show(
        self, interaction: discord.Interaction[Any], user: discord.Member | None = None
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        member = user or interaction.user
        guild_id = interaction.guild_id or 0
        status = await self.services.ledger.user_status(guild_id, member.id)
        history = await self.services.ledger.quota_history(guild_id, member.id, limit=5)
        lines = [info_text(status, mention=member.mention)]
        if history:
            lines.append("Recent changes:")
            lines += [
                f"- {discord.utils.format_dt(c.changed_at, 'R')} by <@{c.moderator_id}>: "
                f"{c.old} → {c.new}"
                for c in history
            ]
        await interaction.followup.send("\n".join(lines), ephemeral=True)

    @app_commands.command(name="reset", description="Give a member the server's default again")
    @app_commands.describe(user="Whose allowance")
    @moderator_only()
    async def reset(self, interaction: discord.Interaction[Any], user: discord.Member) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        change = await self.services.ledger.reset_user_quota(
            interaction.guild_id or 0, user.id, by=interaction.user.id
        )
        await interaction.followup.send(quota_change_text(change), ephemeral=True)

    @app_commands.command(name="block", description="Stop a member from making images")
    @app_commands.describe(user="Who to block")
    @moderator_only()
    async def block(self, interaction: discord.Interaction[Any], user: discord.Member) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        change = await self.services.ledger.block_user(
            interaction.guild_id or 0, user.id, by=interaction.user.id
        )
        await interaction.followup.send(quota_change_text(change), ephemeral=True)
