"""JSON payloads in the shapes discord.py 2.7 parses (gateway events and REST answers).

Kept in one module because a missing required key does not fail loudly: it raises inside
discord.py's gateway loop and silently ends ``bot.start()``. Each builder includes every key the
client indexes directly (checked against discord.py's ``_from_data``/``__init__`` methods).
"""

from __future__ import annotations

from typing import Any

from .attachments import Attachment
from .flags import DM
from .state import Channel, Guild, Member, Message, Role
from .users import Application, User


def user_payload(user: User) -> dict[str, Any]:
    return {
        "id": str(user.id),
        "username": user.name,
        "global_name": user.global_name,
        "discriminator": "0",
        "avatar": None,
        "bot": user.bot,
        "public_flags": 0,
    }


def bot_user_payload(user: User) -> dict[str, Any]:
    """The bot's own user (``GET /users/@me``, READY), with the private fields ClientUser reads."""
    return {
        **user_payload(user),
        "verified": True,
        "mfa_enabled": False,
        "flags": 0,
        "locale": "en-US",
    }


def role_payload(role: Role) -> dict[str, Any]:
    return {
        "id": str(role.id),
        "name": role.name,
        "color": role.color,
        "colors": {"primary_color": role.color, "secondary_color": None, "tertiary_color": None},
        "hoist": False,
        "icon": None,
        "unicode_emoji": None,
        "position": role.position,
        "permissions": str(role.permissions),
        "managed": role.managed,
        "mentionable": role.mentionable,
        "flags": 0,
    }


def member_payload(
    member: Member, *, with_user: bool = True, with_permissions: bool = False
) -> dict[str, Any]:
    """A member; interactions add ``permissions`` (decimal string), resolved data drops ``user``."""
    data: dict[str, Any] = {
        "roles": [str(r.id) for r in member.roles],
        "nick": member.nick,
        "avatar": None,
        "joined_at": member.joined_at.isoformat() if member.joined_at else None,
        "premium_since": None,
        "deaf": False,
        "mute": False,
        "flags": 0,
        "pending": False,
        "communication_disabled_until": None,
    }
    if with_user:
        data["user"] = user_payload(member.user)
    if with_permissions:
        data["permissions"] = str(member.permissions)
    return data


def channel_payload(channel: Channel, *, permissions: int | None = None) -> dict[str, Any]:
    if channel.type == DM:
        data: dict[str, Any] = {
            "id": str(channel.id),
            "type": DM,
            "last_message_id": None,
            "recipients": [user_payload(u) for u in channel.recipients],
            "flags": 0,
        }
    else:
        data = {
            "id": str(channel.id),
            "type": channel.type,
            "guild_id": str(channel.guild_id),
            "name": channel.name,
            "position": channel.position,
            "permission_overwrites": [
                {**o, "id": str(o["id"]), "allow": str(o["allow"]), "deny": str(o["deny"])}
                for o in channel.permission_overwrites
            ],
            "nsfw": channel.nsfw,
            "topic": channel.topic,
            "parent_id": None,
            "last_message_id": None,
            "rate_limit_per_user": 0,
            "flags": 0,
        }
    if permissions is not None:
        data["permissions"] = str(permissions)
    return data


def unavailable_guild_payload(guild: Guild) -> dict[str, Any]:
    return {"id": str(guild.id), "unavailable": True}


def guild_payload(guild: Guild) -> dict[str, Any]:
    """The REST guild object (``GET /guilds/{id}``)."""
    return {
        "id": str(guild.id),
        "name": guild.name,
        "icon": None,
        "splash": None,
        "discovery_splash": None,
        "banner": None,
        "description": None,
        "owner_id": str(guild.owner.id) if guild.owner else "0",
        "roles": [role_payload(r) for r in guild.roles],
        "emojis": [],
        "stickers": [],
        "features": list(guild.features),
        "verification_level": 0,
        "default_message_notifications": 0,
        "explicit_content_filter": 0,
        "mfa_level": 0,
        "nsfw_level": 0,
        "premium_tier": 0,
        "premium_subscription_count": 0,
        "preferred_locale": guild.locale,
        "afk_channel_id": None,
        "afk_timeout": 300,
        "system_channel_id": None,
        "system_channel_flags": 0,
        "rules_channel_id": None,
        "public_updates_channel_id": None,
        "vanity_url_code": None,
        "application_id": None,
        "max_members": 500000,
        "premium_progress_bar_enabled": False,
    }


def guild_create_payload(guild: Guild) -> dict[str, Any]:
    """GUILD_CREATE: the full guild with channels and members, as sent after READY."""
    return {
        **guild_payload(guild),
        "unavailable": False,
        "large": False,
        "member_count": len(guild.members),
        "joined_at": next(iter(guild.members.values())).joined_at.isoformat()  # type: ignore[union-attr]
        if guild.members
        else None,
        "channels": [channel_payload(c) for c in guild.channels],
        "threads": [],
        "members": [member_payload(m) for m in guild.members.values()],
        "presences": [],
        "voice_states": [],
        "stage_instances": [],
        "guild_scheduled_events": [],
        "soundboard_sounds": [],
    }


def application_payload(app: Application) -> dict[str, Any]:
    """``GET /oauth2/applications/@me``: the keys AppInfo indexes directly, plus flags."""
    return {
        "id": str(app.id),
        "name": app.name,
        "description": "",
        "icon": None,
        "bot_public": False,
        "bot_require_code_grant": False,
        "owner": user_payload(app.owner),
        "team": None,
        "verify_key": "0" * 64,
        "flags": app.flags,
        "bot": user_payload(app.bot),
        "interactions_endpoint_url": None,
        "redirect_uris": [],
        "tags": [],
    }


def attachment_payload(attachment: Attachment) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": str(attachment.id),
        "filename": attachment.filename,
        "size": attachment.size,
        "url": attachment.url,
        "proxy_url": attachment.url,
        "content_type": attachment.content_type,
        "flags": 0,
    }
    if attachment.description is not None:
        data["description"] = attachment.description
    dims = attachment.dimensions
    if dims is not None:
        data["width"], data["height"] = dims
    return data


def message_payload(message: Message) -> dict[str, Any]:
    """A full message object (REST answers, MESSAGE_CREATE/UPDATE, an interaction's ``message``)."""
    data: dict[str, Any] = {
        "id": str(message.id),
        "channel_id": str(message.channel.id),
        "type": message.message_type,
        "author": user_payload(message.author),
        "content": message.content,
        "timestamp": message.created_at.isoformat() if message.created_at else None,
        "edited_timestamp": message.edited_at.isoformat() if message.edited_at else None,
        "tts": message.tts,
        "mention_everyone": message.pings_everyone,
        "mentions": [
            user_payload(u)
            for uid in sorted(message.pinged_user_ids)
            if (u := _known_user(message, uid))
        ],
        "mention_roles": [str(r) for r in sorted(message.pinged_role_ids)],
        "attachments": [attachment_payload(a) for a in message.attachments],
        "embeds": message.embeds,
        "components": message.components,
        "pinned": False,
        "flags": message.flags,
    }
    if message.guild_id is not None:
        data["guild_id"] = str(message.guild_id)
    if message.webhook_id is not None:
        data["webhook_id"] = str(message.webhook_id)
    if message.application_id is not None:
        data["application_id"] = str(message.application_id)
    if message.message_reference is not None:
        data["message_reference"] = message.message_reference
    interaction = message.interaction
    if interaction is not None:
        data["interaction_metadata"] = {
            "id": str(interaction.id),
            "type": interaction.type,
            "user": user_payload(interaction.user),
            "authorizing_integration_owners": interaction.payload.get(
                "authorizing_integration_owners", {}
            ),
        }
        if interaction.command_name:
            data["interaction_metadata"]["name"] = interaction.command_name
    return data


def _known_user(message: Message, user_id: int) -> User | None:
    guild = message.channel.guild
    if guild is not None and user_id in guild.members:
        return guild.members[user_id].user
    for user in message.channel.recipients:
        if user.id == user_id:
            return user
    return None


__all__ = [
    "application_payload",
    "attachment_payload",
    "bot_user_payload",
    "channel_payload",
    "guild_create_payload",
    "guild_payload",
    "member_payload",
    "message_payload",
    "role_payload",
    "unavailable_guild_payload",
    "user_payload",
]
