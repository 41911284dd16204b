"""INTERACTION_CREATE payloads as the Discord client would send them: who, where, which command
with which options, what was clicked, what a modal holds.

Built from the world and the commands the bot synced, and refused (``ValueError``) where the
Discord client would not let a user do it, unless the test asks for a forgery
(``validate=False``). Sending them is :class:`~testkit.discord_server.actions.UserActions`'s job.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

from .address import Address
from .commands import CommandRegistry, build_options
from .flags import ADMINISTRATOR, DEFAULT_BOT_PERMISSIONS
from .interactions import (
    APPLICATION_COMMAND,
    AUTOCOMPLETE,
    MESSAGE_COMPONENT,
    MODAL_SUBMIT,
    Interaction,
)
from .payloads import channel_payload, member_payload, message_payload, user_payload
from .state import DEFAULT_ATTACHMENT_SIZE_LIMIT, Channel, Guild, Member, Message, State
from .users import User

UserLike = User | Member


class Unset:
    """Marker for "pick the only guild/channel" defaults."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = Unset()


class Invocation(TypedDict, total=False):
    """How a slash command is run, besides by whom and with which options (see
    :meth:`DiscordTestServer.invoke`)."""

    subcommand: str | Sequence[str] | None
    guild: Guild | None
    channel: Channel | None
    locale: str
    attachment_size_limit: int | None
    validate: bool


class InteractionPayloads:
    """The ``d`` of INTERACTION_CREATE for commands, autocomplete, clicks and modal submits."""

    def __init__(self, state: State, commands: CommandRegistry, address: Address) -> None:
        self.state = state
        self.commands = commands
        self.address = address

    def command(
        self,
        command: str,
        user: UserLike,
        options: Mapping[str, Any],
        focused: str | None,
        how: Invocation,
    ) -> dict[str, Any]:
        """``/command`` run by ``user`` (see :meth:`DiscordTestServer.invoke` for ``how``); with
        ``focused``, the autocomplete for that option."""
        subcommand = how.get("subcommand")
        validate = how.get("validate", True)
        guild, channel = self.where(how.get("guild", UNSET), how.get("channel"))
        locale = how.get("locale", "en-US")
        attachment_size_limit = how.get("attachment_size_limit")
        name, *path = command.split()
        if subcommand:
            path += subcommand.split() if isinstance(subcommand, str) else list(subcommand)
        definition = self.commands.find(name, guild.id if guild else None)
        member = self.member(guild, user)
        if validate:
            self.check_command_visible(definition, guild, channel, member)
        built = build_options(
            self.state,
            definition,
            path,
            options,
            guild=guild,
            focused=focused,
            validate=validate,
            attachment_url=lambda a: self.address.attachment_url(a, channel),
        )
        data: dict[str, Any] = {
            "id": definition["id"],
            "name": definition["name"],
            "type": definition.get("type", 1),
        }
        if built.options:
            data["options"] = built.options
        if built.resolved:
            data["resolved"] = built.resolved
        if "guild_id" in definition:
            data["guild_id"] = definition["guild_id"]
        kind = AUTOCOMPLETE if focused else APPLICATION_COMMAND
        payload = self.base(kind, user, guild, channel, locale, attachment_size_limit)
        payload["data"] = data
        return payload

    def click(
        self,
        message: Message,
        custom_id: str,
        *,
        user: UserLike,
        values: Sequence[str] | None,
        validate: bool,
    ) -> dict[str, Any]:
        """A press of ``custom_id`` on ``message`` (see :meth:`DiscordTestServer.click`)."""
        if message.deleted:
            raise ValueError(f"{message!r} was deleted; nobody can click it")
        component = message.component(custom_id)
        forged_component = component is None and not validate
        if forged_component:  # a forged id on a real message: the payload claims it is there
            component = {"type": 2, "style": 2, "label": "forged", "custom_id": custom_id}
        if component is None:
            raise ValueError(
                f"no component {custom_id!r} on {message!r}; it has {message.custom_ids}"
            )
        if validate and component.get("disabled"):
            raise ValueError(f"component {custom_id!r} is disabled; Discord would not send a click")
        channel = message.channel
        if (
            validate
            and message.ephemeral
            and message.interaction
            and message.interaction.user.id != self.state.user(user).id
        ):
            raise ValueError("only the user who got an ephemeral message can click it")
        payload = self.base(MESSAGE_COMPONENT, user, channel.guild, channel, "en-US", None)
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": component["type"]}
        if component["type"] != 2:
            data["values"] = list(values or [])
        payload["data"] = data
        payload["message"] = message_payload(message)
        if forged_component:
            payload["message"]["components"] = [
                *payload["message"].get("components", []),
                {"type": 1, "components": [component]},
            ]
        return payload

    def modal_submit(
        self, interaction: Interaction, values: Mapping[str, str], *, user: UserLike | None
    ) -> dict[str, Any]:
        """The modal the bot opened on ``interaction``, filled in with ``values``."""
        modal = interaction.modal
        if modal is None:
            raise ValueError(f"the bot opened no modal on {interaction!r}")
        remaining = dict(values)

        def answer(component: dict[str, Any]) -> dict[str, Any]:
            custom_id = component.get("custom_id")
            if component.get("type") == 4:
                return {"type": 4, "custom_id": custom_id, "value": remaining.pop(custom_id, "")}
            out = {"type": component["type"], "custom_id": custom_id, "values": []}
            if custom_id in remaining:
                value = remaining.pop(custom_id)
                out["values"] = list(value) if isinstance(value, list | tuple) else [value]
            return out

        components: list[dict[str, Any]] = []
        for top in modal.get("components", []):
            if top.get("type") == 1:
                components.append(
                    {"type": 1, "components": [answer(c) for c in top.get("components", [])]}
                )
            elif top.get("type") == 18:
                components.append({"type": 18, "component": answer(top["component"])})
        if remaining:
            raise ValueError(f"modal {modal.get('custom_id')!r} has no inputs {sorted(remaining)}")
        who = user or interaction.member or interaction.user
        payload = self.base(
            MODAL_SUBMIT,
            who,
            interaction.guild,
            interaction.channel,
            "en-US",
            interaction.attachment_size_limit,
        )
        payload["data"] = {"custom_id": modal["custom_id"], "components": components}
        if interaction.source_message is not None:
            payload["message"] = message_payload(interaction.source_message)
        return payload

    # -- parts ---------------------------------------------------------------------------------

    def where(self, guild: Guild | None, channel: Channel | None) -> tuple[Guild | None, Channel]:
        """The guild and channel of an invocation: as given, else the only guild's first channel."""
        if channel is not None:
            if guild is not UNSET and guild is not channel.guild:
                raise ValueError(f"{channel!r} is not in {guild!r}")
            return channel.guild, channel
        if guild is UNSET:
            guilds = list(self.state.guilds.values())
            if len(guilds) != 1:
                raise ValueError(f"pass guild= or channel=: there are {len(guilds)} guilds")
            guild = guilds[0]
        if guild is None:
            raise ValueError("pass channel= (a DM channel) for an interaction outside a guild")
        channels = guild.text_channels()
        if not channels:
            raise ValueError(
                f"{guild!r} has no text channel; create one with guild.create_text_channel()"
            )
        return guild, channels[0]

    def member(self, guild: Guild | None, user: UserLike) -> Member | None:
        """``user`` as a member of ``guild`` (None outside a guild; an error if not a member)."""
        if guild is None:
            return None
        member = guild.members.get(self.state.user(user).id)
        if member is None:
            raise ValueError(
                f"{user!r} is not a member of {guild!r}; call guild.add_member(user) first"
            )
        return member

    def check_command_visible(
        self,
        command: Mapping[str, Any],
        guild: Guild | None,
        channel: Channel,
        member: Member | None,
    ) -> None:
        """Discord only lets users run commands they can see; refuse the rest with a reason."""
        contexts = command.get("contexts")
        context = 0 if guild is not None else 1
        if contexts is not None and context not in contexts:
            raise ValueError(
                f"/{command['name']} is not offered in this context (contexts={contexts})"
            )
        if guild is None and command.get("dm_permission") is False:
            raise ValueError(f"/{command['name']} is not offered in DMs (dm_permission=false)")
        required = command.get("default_member_permissions")
        if required is not None and member is not None:
            bits = int(required)
            perms = member.permissions
            if not perms & ADMINISTRATOR and (perms & bits) != bits:
                raise ValueError(
                    f"/{command['name']} needs permissions {bits:#x}; {member!r} would not see it "
                    "(pass validate=False to send it anyway)"
                )
        if command.get("nsfw") and not channel.nsfw:
            raise ValueError(f"/{command['name']} is NSFW-only and {channel!r} is not NSFW")

    def base(
        self,
        kind: int,
        user: UserLike,
        guild: Guild | None,
        channel: Channel | None,
        locale: str,
        attachment_size_limit: int | None,
    ) -> dict[str, Any]:
        """What every interaction carries: ids, token, who, where, locale, permissions."""
        app = self.state.require_application()
        who = self.state.user(user)
        limit = attachment_size_limit or (
            guild.attachment_size_limit if guild else DEFAULT_ATTACHMENT_SIZE_LIMIT
        )
        payload: dict[str, Any] = {
            "id": str(self.state.ids.next()),
            "application_id": str(app.id),
            "type": kind,
            "token": f"aW50ZXJhY3Rpb24.{secrets.token_urlsafe(32)}",
            "version": 1,
            "locale": locale,
            "entitlements": [],
            "attachment_size_limit": limit,
            "context": 0 if guild is not None else 1,
            "authorizing_integration_owners": {"0": str(guild.id) if guild else "0"},
        }
        if channel is not None:
            member = guild.members.get(who.id) if guild else None
            payload["channel_id"] = str(channel.id)
            payload["channel"] = channel_payload(
                channel, permissions=member.permissions if member else None
            )
        if guild is not None:
            member = self.member(guild, who)
            assert member is not None
            bot_member = guild.members[app.bot.id]
            payload["guild_id"] = str(guild.id)
            payload["guild"] = {
                "id": str(guild.id),
                "locale": guild.locale,
                "features": list(guild.features),
            }
            payload["guild_locale"] = guild.locale
            payload["member"] = member_payload(member, with_permissions=True)
            payload["app_permissions"] = str(bot_member.permissions)
        else:
            payload["user"] = user_payload(who)
            payload["app_permissions"] = str(DEFAULT_BOT_PERMISSIONS)
        return payload


__all__ = ["UNSET", "InteractionPayloads", "Invocation", "Unset", "UserLike"]
