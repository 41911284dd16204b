"""The Discord world a test sets up: application, users, guilds, roles, members, channels, messages.

Plain mutable objects, created through :class:`State` (or helpers on :class:`Guild`) so ids are
real snowflakes and, once the bot is connected, the matching gateway events (GUILD_CREATE,
CHANNEL_CREATE, ...) are sent. Permission bits are ints, as Discord sends them (:mod:`.flags`).

The bottom of the server: this module imports no other part of it but the clock, the rules and
the numbers, so every handler can depend on the world without depending on the server.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypedDict

from .attachments import Attachment
from .clock import ServerClock, SnowflakeFactory
from .flags import (
    ADMINISTRATOR,
    ALL_PERMISSIONS,
    DEFAULT_BOT_PERMISSIONS,
    DEFAULT_MEMBER_PERMISSIONS,
    DM,
    FLAG_EPHEMERAL,
    FLAG_LOADING,
    GUILD_TEXT,
)
from .rules import MIB, Rules
from .users import Application, User

DEFAULT_ATTACHMENT_SIZE_LIMIT = 10 * MIB


@dataclass(eq=False)
class Role:
    """A guild role; ``permissions`` is the Discord bit field as an int."""

    id: int
    guild: Guild
    name: str
    permissions: int = 0
    position: int = 0
    mentionable: bool = False
    managed: bool = False
    color: int = 0

    @property
    def mention(self) -> str:
        return f"<@&{self.id}>"

    def __repr__(self) -> str:
        return f"Role({self.name!r}, id={self.id}, permissions={self.permissions:#x})"


@dataclass(eq=False)
class Member:
    """A user in a guild; ``permissions`` is computed from roles unless overridden."""

    user: User
    guild: Guild
    roles: list[Role] = field(default_factory=list)
    nick: str | None = None
    permissions_override: int | None = None
    joined_at: datetime | None = None

    @property
    def id(self) -> int:
        return self.user.id

    @property
    def mention(self) -> str:
        return self.user.mention

    @property
    def permissions(self) -> int:
        """Guild-level permission bits, as sent in ``member.permissions`` of interactions."""
        if self.permissions_override is not None:
            return self.permissions_override
        if self.guild.owner is not None and self.guild.owner.id == self.user.id:
            return ALL_PERMISSIONS
        bits = self.guild.everyone_role.permissions
        for role in self.roles:
            bits |= role.permissions
        return ALL_PERMISSIONS if bits & ADMINISTRATOR else bits

    def __repr__(self) -> str:
        return (
            f"Member({self.user.name!r}, guild={self.guild.name!r}, "
            f"permissions={self.permissions:#x})"
        )


@dataclass(eq=False)
class Channel:
    """A guild text channel (``nsfw`` flag) or a DM channel (``guild is None``)."""

    id: int
    name: str
    type: int = GUILD_TEXT
    guild: Guild | None = None
    nsfw: bool = False
    topic: str | None = None
    position: int = 0
    recipients: list[User] = field(default_factory=list)
    bot_can_send: bool = True
    """False makes ``POST /channels/{id}/messages`` answer 403 code 50013 Missing Permissions."""
    permission_overwrites: list[dict[str, Any]] = field(default_factory=list)
    """As Discord sends them (``{"id", "type": 0 role / 1 member, "allow", "deny"}``); shown
    in channel payloads, for code that computes permissions (e.g. ``imagine-bot doctor``)."""
    messages: list[Message] = field(default_factory=list)

    @property
    def guild_id(self) -> int | None:
        return self.guild.id if self.guild is not None else None

    @property
    def mention(self) -> str:
        return f"<#{self.id}>"

    def visible_messages(self) -> list[Message]:
        """Messages not deleted, oldest first."""
        return [m for m in self.messages if not m.deleted]

    def __repr__(self) -> str:
        return f"Channel({self.name!r}, id={self.id}, nsfw={self.nsfw})"


@dataclass(eq=False)
class Guild:
    """A guild; create its channels, roles and members through the helper methods."""

    id: int
    name: str
    state: State
    owner: User | None = None
    roles: list[Role] = field(default_factory=list)
    channels: list[Channel] = field(default_factory=list)
    members: dict[int, Member] = field(default_factory=dict)
    attachment_size_limit: int = DEFAULT_ATTACHMENT_SIZE_LIMIT
    locale: str = "en-US"
    features: list[str] = field(default_factory=list)

    @property
    def everyone_role(self) -> Role:
        """The @everyone role (same id as the guild), holding the base permissions."""
        return self.roles[0]

    def create_text_channel(
        self, name: str, *, nsfw: bool = False, topic: str | None = None
    ) -> Channel:
        """Add a text channel (sends CHANNEL_CREATE if the bot is connected)."""
        channel = Channel(
            id=self.state.ids.next(),
            name=name,
            guild=self,
            nsfw=nsfw,
            topic=topic,
            position=len(self.channels),
        )
        self.channels.append(channel)
        self.state.channels[channel.id] = channel
        self.state.emit("channel_create", channel)
        return channel

    def create_role(
        self, name: str, *, permissions: int = 0, mentionable: bool = False, color: int = 0
    ) -> Role:
        """Add a role with the given permission bits (sends GUILD_ROLE_CREATE if connected)."""
        role = Role(
            id=self.state.ids.next(),
            guild=self,
            name=name,
            permissions=permissions,
            position=len(self.roles),
            mentionable=mentionable,
            color=color,
        )
        self.roles.append(role)
        self.state.emit("role_create", role)
        return role

    def add_member(
        self,
        user: User,
        *,
        roles: Iterable[Role] = (),
        permissions: int | None = None,
        nick: str | None = None,
    ) -> Member:
        """Make ``user`` a member; ``permissions`` overrides the bits computed from roles."""
        member = Member(
            user=user,
            guild=self,
            roles=list(roles),
            nick=nick,
            permissions_override=permissions,
            joined_at=self.state.clock.utcnow(),
        )
        self.members[user.id] = member
        self.state.emit("member_add", member)
        return member

    def member(self, user: User | int) -> Member:
        """The member for a user (KeyError with a clear message if not in the guild)."""
        user_id = user if isinstance(user, int) else user.id
        try:
            return self.members[user_id]
        except KeyError:
            raise KeyError(f"user {user_id} is not a member of guild {self.name!r}") from None

    def text_channels(self) -> list[Channel]:
        return [c for c in self.channels if c.type == GUILD_TEXT]

    def __repr__(self) -> str:
        return f"Guild({self.name!r}, id={self.id})"


class InteractionOrigin(Protocol):
    """What a message knows of the interaction it answers (Discord's ``interaction_metadata``).

    The object is the test's :class:`~testkit.discord_server.interactions.Interaction` handle,
    one layer up: the world names only what it reads, so it never imports the handle.
    """

    id: int
    type: int
    user: User
    command_name: str | None
    payload: dict[str, Any]


@dataclass(frozen=True)
class MessageVersion:
    """A message's content before one edit (for edit-history assertions)."""

    content: str
    embeds: list[dict[str, Any]]
    components: list[dict[str, Any]]
    attachment_ids: list[int]
    flags: int
    at: datetime


@dataclass(eq=False)
class Message:
    """A message as stored by the server, with who it pinged and how often it was edited."""

    id: int
    channel: Channel
    author: User
    content: str = ""
    embeds: list[dict[str, Any]] = field(default_factory=list)
    components: list[dict[str, Any]] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    flags: int = 0
    allowed_mentions: dict[str, Any] | None = None
    """The ``allowed_mentions`` the bot sent (``None``: not sent, everything parsed pings)."""
    tts: bool = False
    created_at: datetime | None = None
    edited_at: datetime | None = None
    history: list[MessageVersion] = field(default_factory=list)
    deleted: bool = False
    interaction: InteractionOrigin | None = None
    """The interaction whose response/followup this message is, if any (its
    :class:`~testkit.discord_server.interactions.Interaction` handle)."""
    webhook_id: int | None = None
    application_id: int | None = None
    message_type: int = 0
    pinged_user_ids: set[int] = field(default_factory=set)
    pinged_role_ids: set[int] = field(default_factory=set)
    pings_everyone: bool = False
    message_reference: dict[str, Any] | None = None

    @property
    def channel_id(self) -> int:
        return self.channel.id

    @property
    def guild_id(self) -> int | None:
        return self.channel.guild_id

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & FLAG_EPHEMERAL)

    @property
    def loading(self) -> bool:
        """A deferred "is thinking..." message not filled in yet."""
        return bool(self.flags & FLAG_LOADING)

    @property
    def edit_count(self) -> int:
        return len(self.history)

    def iter_components(self) -> Iterator[dict[str, Any]]:
        """Every component, depth first (action rows, buttons, selects, v2 containers)."""
        stack = list(reversed(self.components))
        while stack:
            component = stack.pop()
            yield component
            children = list(component.get("components", []))
            if "component" in component:
                children.append(component["component"])
            if "accessory" in component:
                children.append(component["accessory"])
            stack.extend(reversed(children))

    @property
    def buttons(self) -> list[dict[str, Any]]:
        return [c for c in self.iter_components() if c.get("type") == 2]

    @property
    def custom_ids(self) -> list[str]:
        return [c["custom_id"] for c in self.iter_components() if "custom_id" in c]

    def component(self, custom_id: str) -> dict[str, Any] | None:
        """The component with this ``custom_id``, if present."""
        return next((c for c in self.iter_components() if c.get("custom_id") == custom_id), None)

    def attachment(self, filename: str) -> Attachment:
        """The attachment with this filename (KeyError lists the ones present)."""
        for attachment in self.attachments:
            if attachment.filename == filename:
                return attachment
        raise KeyError(f"no attachment {filename!r}; have {[a.filename for a in self.attachments]}")

    def __repr__(self) -> str:
        bits = [f"id={self.id}", f"content={self.content[:60]!r}"]
        if self.attachments:
            bits.append(f"files={[a.filename for a in self.attachments]}")
        if self.custom_ids:
            bits.append(f"custom_ids={self.custom_ids}")
        if self.flags:
            bits.append(f"flags={self.flags}")
        if self.deleted:
            bits.append("deleted")
        return f"Message({', '.join(bits)})"


Listener = Callable[[str, Any], None]


class GuildOptions(TypedDict, total=False):
    """A new guild's settings besides its name (the defaults: :meth:`State.create_guild`)."""

    owner: User | None
    bot_permissions: int
    everyone_permissions: int
    attachment_size_limit: int
    locale: str


class State:
    """Everything the server knows, indexed by id; ``emit`` forwards changes to the gateway.

    It also carries the clock and the :class:`Rules` every part reads, so that a test that
    replaces ``server.rules`` changes them for all at once.
    """

    def __init__(self, clock: ServerClock, rules: Rules | None = None) -> None:
        self.clock = clock
        self.rules = rules or Rules()
        self.ids = SnowflakeFactory(clock)
        self.application: Application | None = None
        self.users: dict[int, User] = {}
        self.guilds: dict[int, Guild] = {}
        self.channels: dict[int, Channel] = {}
        self.messages: dict[int, Message] = {}
        self.attachments: dict[int, Attachment] = {}
        self.listener: Listener | None = None

    def emit(self, kind: str, obj: Any) -> None:
        if self.listener is not None:
            self.listener(kind, obj)

    def create_user(self, name: str, *, bot: bool = False, global_name: str | None = None) -> User:
        user = User(id=self.ids.next(), name=name, bot=bot, global_name=global_name)
        self.users[user.id] = user
        return user

    def create_application(
        self,
        name: str,
        *,
        token: str | None = None,
        flags: int = 0,
        allowed_intents: int | None = None,
    ) -> Application:
        if self.application is not None:
            raise RuntimeError(
                "the server holds one application; create_application was already called"
            )
        bot = self.create_user(name, bot=True)
        owner = self.create_user(f"{name}-owner")
        app = Application(
            id=self.ids.next(),
            name=name,
            token=token or f"test.{secrets.token_urlsafe(24)}",
            bot=bot,
            owner=owner,
            flags=flags,
            allowed_intents=allowed_intents,
        )
        self.application = app
        return app

    def require_application(self) -> Application:
        if self.application is None:
            raise RuntimeError("call server.create_application(...) first")
        return self.application

    def create_guild(
        self,
        name: str,
        *,
        owner: User | None = None,
        bot_permissions: int = DEFAULT_BOT_PERMISSIONS,
        everyone_permissions: int = DEFAULT_MEMBER_PERMISSIONS,
        attachment_size_limit: int = DEFAULT_ATTACHMENT_SIZE_LIMIT,
        locale: str = "en-US",
    ) -> Guild:
        app = self.require_application()
        guild = Guild(
            id=self.ids.next(),
            name=name,
            state=self,
            owner=owner,
            attachment_size_limit=attachment_size_limit,
            locale=locale,
        )
        guild.roles.append(
            Role(id=guild.id, guild=guild, name="@everyone", permissions=everyone_permissions)
        )
        bot_role = Role(
            id=self.ids.next(),
            guild=guild,
            name=app.name,
            permissions=bot_permissions,
            position=1,
            managed=True,
        )
        guild.roles.append(bot_role)
        guild.members[app.bot.id] = Member(
            user=app.bot, guild=guild, roles=[bot_role], joined_at=self.clock.utcnow()
        )
        if owner is not None:
            guild.members[owner.id] = Member(user=owner, guild=guild, joined_at=self.clock.utcnow())
        self.guilds[guild.id] = guild
        self.emit("guild_create", guild)
        return guild

    def create_dm_channel(self, user: User) -> Channel:
        """The DM channel between the bot and ``user`` (created once, then reused)."""
        self.require_application()
        for channel in self.channels.values():
            if channel.type == DM and channel.recipients and channel.recipients[0].id == user.id:
                return channel
        channel = Channel(id=self.ids.next(), name=user.name, type=DM, recipients=[user])
        self.channels[channel.id] = channel
        return channel

    def channel(self, channel: Channel | int) -> Channel:
        channel_id = channel if isinstance(channel, int) else channel.id
        try:
            return self.channels[channel_id]
        except KeyError:
            raise KeyError(f"unknown channel {channel_id}") from None

    def user(self, user: User | Member | int) -> User:
        if isinstance(user, Member):
            return user.user
        if isinstance(user, User):
            return user
        return self.users[user]


__all__ = [
    "DEFAULT_ATTACHMENT_SIZE_LIMIT",
    "Channel",
    "Guild",
    "GuildOptions",
    "InteractionOrigin",
    "Listener",
    "Member",
    "Message",
    "MessageVersion",
    "Role",
    "State",
]
