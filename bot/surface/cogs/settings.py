"""`/settings show|set|reset`: a guild's own rules, changed by its moderators.

The config file gives every guild the same defaults; here moderators of one guild change its
default allowance, allowed channels, blocked words, forced negative prompt and flagged-image
policy for that guild only. Hidden from members and checked by the bot (`moderator_only`);
every change is audited in the database with the moderator's id.
"""

from __future__ import annotations

from typing import Any, Literal

import discord
from discord import app_commands
from discord.ext import commands

from engine import ImageRequest, InvalidRequest

from ...errors import BadSetting
from ...ledger import FLAGGED_POLICIES, SETTINGS, parse_setting
from ...services import Services
from ..checks import moderator_only

__all__ = ["SettingsCog"]

Setting = Literal[
    "daily_images",
    "allowed_channel_ids",
    "blocked_words",
    "forced_negative_prompt",
    "flagged_images",
]

_HELP = {
    "daily_images": "images per member per rolling 24 hours (a number; 0: only set allowances)",
    "allowed_channel_ids": "where /imagine works: mention channels (#art #lounge), or `all`",
    "blocked_words": "words refused in prompts, separated by commas",
    "forced_negative_prompt": "always added to the negative prompt",
    "flagged_images": f"images the safety checker flags: {' or '.join(FLAGGED_POLICIES)}",
}


def _shown(name: str, value: Any) -> str:
    if name == "allowed_channel_ids":
        return " ".join(f"<#{c}>" for c in value) or "every channel"
    if name == "blocked_words":
        return ", ".join(value) or "none"
    if value == "":
        return "none"
    return str(value)


@app_commands.guild_only()
@app_commands.default_permissions(manage_guild=True)
class SettingsCog(
    commands.GroupCog, group_name="settings", group_description="This server's image rules"
):
    def __init__(self, services: Services) -> None:
        self.services = services
        super().__init__()

    @app_commands.command(name="show", description="This server's rules and recent changes")
    @moderator_only()
    async def show(self, interaction: discord.Interaction[Any]) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        guild_id = interaction.guild_id or 0
        rules = self.services.rules
        lines = []
        for name, value, own in await rules.effective(guild_id):
            where = "set here" if own else "the bot's default"
            lines.append(f"**{name}**: {_shown(name, value)} ({where}) — {_HELP[name]}")
        history = await self.services.ledger.settings_history(guild_id, limit=5)
        if history:
            lines.append("Recent changes:")
            lines += [
                f"- <@{c.moderator_id}>: {c.setting} {c.old or 'default'} → {c.new or 'default'}"
                for c in history
            ]
        await interaction.followup.send("\n".join(lines)[:2000], ephemeral=True)

    @app_commands.command(name="set", description="Change one of this server's rules")
    @app_commands.describe(setting="Which rule", value="The new value (see /settings show)")
    @moderator_only()
    async def set_(
        self,
        interaction: discord.Interaction[Any],
        setting: Setting,
        value: app_commands.Range[str, 1, 1000],
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            parsed = parse_setting(setting, value)  # also refuses a forged setting name
        except ValueError as exc:
            raise BadSetting(str(exc)) from None
        if setting == "forced_negative_prompt":
            await self._usable_negative(parsed)
        await self.services.rules.change(
            interaction.guild_id or 0, setting, parsed, interaction.user.id
        )
        await interaction.followup.send(
            f"**{setting}** is now {_shown(setting, parsed)} in this server.", ephemeral=True
        )

    async def _usable_negative(self, text: str) -> None:
        """Refuse a forced negative prompt the engine would refuse (`(x:1.2.3)`): it joins
        every request of the server, so every request would fail. Checked as a request's
        negative prompt is, by the engine's own validation, for every model."""
        engine = self.services.engine
        for model in engine.model_names:
            try:
                await engine.check(ImageRequest(prompt="a test", negative_prompt=text, model=model))
            except InvalidRequest as exc:
                raise BadSetting(
                    f"That negative prompt cannot be used: {exc.message} It would be added to "
                    "every request here, so nothing was changed."
                ) from None

    @app_commands.command(name="reset", description="Give a rule the bot's default again")
    @app_commands.describe(setting="Which rule")
    @moderator_only()
    async def reset(self, interaction: discord.Interaction[Any], setting: Setting) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        if setting not in SETTINGS:  # a forged name (the declared choices are checked too)
            raise BadSetting(f"There is no setting {setting!r}.")
        await self.services.rules.change(
            interaction.guild_id or 0, setting, None, interaction.user.id
        )
        await interaction.followup.send(
            f"**{setting}** is the bot's default again in this server.", ephemeral=True
        )
