"""World set-up, the first part of the test API: the application, users, guilds and DM channels
(a guild's channels, roles and members through :class:`~.state.Guild`), and reading back what
exists, synced commands included."""

from __future__ import annotations

from typing import Any, Unpack

from .commands import CommandRegistry
from .state import Channel, Guild, GuildOptions, Member, Message, State
from .users import Application, User


def id_of(obj: Guild | int | None) -> int | None:
    """An object's id (an int or None stays as it is)."""
    if obj is None or isinstance(obj, int):
        return obj
    return obj.id


class WorldSetup:
    """Part of :class:`~testkit.discord_server.server.DiscordTestServer`."""

    state: State
    commands: CommandRegistry

    def create_application(
        self,
        name: str = "imagine-bot",
        *,
        token: str | None = None,
        flags: int = 0,
        allowed_intents: int | None = None,
    ) -> Application:
        """The bot's application (bot user + token); call once, before guilds."""
        return self.state.create_application(
            name, token=token, flags=flags, allowed_intents=allowed_intents
        )

    @property
    def application(self) -> Application:
        return self.state.require_application()

    @property
    def bot_user(self) -> User:
        return self.application.bot

    def create_user(self, name: str, *, bot: bool = False, global_name: str | None = None) -> User:
        return self.state.create_user(name, bot=bot, global_name=global_name)

    def create_guild(self, name: str = "Test Guild", **options: Unpack[GuildOptions]) -> Guild:
        """A guild the bot is in (sent as GUILD_CREATE on IDENTIFY, or live if connected).

        ``owner`` (none), ``bot_permissions`` and ``everyone_permissions`` (Discord's defaults
        for a bot and for members), ``attachment_size_limit`` (10 MiB), ``locale`` ("en-US").
        """
        return self.state.create_guild(name, **options)

    def create_dm_channel(self, user: User | Member) -> Channel:
        return self.state.create_dm_channel(self.state.user(user))

    def channel(self, channel: Channel | int) -> Channel:
        return self.state.channel(channel)

    def message(self, message_id: int) -> Message:
        return self.state.messages[message_id]

    def messages_in(
        self, channel: Channel | int, *, include_deleted: bool = False
    ) -> list[Message]:
        """Messages of a channel, oldest first (ephemeral ones included, flagged)."""
        ch = self.state.channel(channel)
        return list(ch.messages) if include_deleted else ch.visible_messages()

    # -- commands ------------------------------------------------------------------------------

    def synced_commands(self, guild: Guild | int | None = None) -> list[dict[str, Any]]:
        """What the bot synced globally (``guild=None``) or to one guild."""
        return self.commands.list(id_of(guild))

    def synced_command(self, name: str, guild: Guild | int | None = None) -> dict[str, Any]:
        """One synced command (guild set first, then global), as stored with ``id``."""
        return self.commands.find(name, id_of(guild))


__all__ = ["WorldSetup", "id_of"]
