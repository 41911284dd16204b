"""The test's handle on one interaction: everything the bot did with it, and ways to await it."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from .clock import ServerClock
from .flags import FLAG_EPHEMERAL
from .recording import RecordedRequest, UploadedFile
from .rules import Rules, Violation
from .state import DEFAULT_ATTACHMENT_SIZE_LIMIT, Channel, Guild, Member, Message, State
from .users import User

T = TypeVar("T")

# Interaction types.
PING = 1
APPLICATION_COMMAND = 2
MESSAGE_COMPONENT = 3
AUTOCOMPLETE = 4
MODAL_SUBMIT = 5

# Callback (response) types.
CHANNEL_MESSAGE = 4
DEFERRED_CHANNEL_MESSAGE = 5
DEFERRED_UPDATE_MESSAGE = 6
UPDATE_MESSAGE = 7
AUTOCOMPLETE_RESULT = 8
MODAL = 9


class InteractionHost(Protocol):
    """What an interaction handle reads from its server: the rules and clock, and a way to wait
    (:class:`~testkit.discord_server.server.DiscordTestServer` is one; this module never
    imports it)."""

    clock: ServerClock

    @property
    def rules(self) -> Rules: ...

    async def wait_until(
        self,
        predicate: Callable[[], T | None],
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        what: str = "a condition",
        seen: Callable[[], str] | None = None,
    ) -> T: ...


@dataclass
class CallbackRecord:
    """One ``POST /interactions/{id}/{token}/callback`` attempt and how the server answered it."""

    type: int
    data: dict[str, Any] | None
    files: list[UploadedFile]
    status: int
    accepted: bool
    at: float
    """Server-clock seconds since the interaction was created."""
    request: RecordedRequest | None = None

    @property
    def ephemeral(self) -> bool:
        return bool(self.data and int(self.data.get("flags") or 0) & FLAG_EPHEMERAL)


@dataclass(eq=False)
class Interaction:
    """An interaction the server sent to the bot, and everything the bot did with it."""

    server: InteractionHost = field(repr=False)
    id: int
    token: str
    type: int
    payload: dict[str, Any] = field(repr=False)
    """Exactly what went over the gateway as INTERACTION_CREATE ``d``."""
    user: User
    member: Member | None
    guild: Guild | None
    channel: Channel | None
    created_at: float
    """Server-clock time (``server.clock.now()``) when it was dispatched."""
    attachment_size_limit: int
    command_name: str | None = None
    custom_id: str | None = None
    source_message: Message | None = field(default=None, repr=False)
    """For component interactions: the message whose component was used."""
    callbacks: list[CallbackRecord] = field(default_factory=list, repr=False)
    response: CallbackRecord | None = field(default=None, repr=False)
    """The accepted initial response (None until the bot answered in time)."""
    original: Message | None = field(default=None, repr=False)
    """The message ``@original`` refers to (the response message, or the clicked message)."""
    followups: list[Message] = field(default_factory=list, repr=False)
    """Messages created through ``POST /webhooks/{app}/{token}`` (the first one after a defer
    fills the deferred response, so it is also :attr:`original`)."""
    requests: list[RecordedRequest] = field(default_factory=list, repr=False)
    violations: list[Violation] = field(default_factory=list, repr=False)
    autocomplete_choices: list[dict[str, Any]] | None = field(default=None, repr=False)
    modal: dict[str, Any] | None = field(default=None, repr=False)
    """The modal the bot opened (callback type 9), for :meth:`DiscordTestServer.submit_modal`."""

    # -- state ---------------------------------------------------------------------------------

    @property
    def acknowledged(self) -> bool:
        return self.response is not None

    @property
    def response_type(self) -> int | None:
        return self.response.type if self.response else None

    @property
    def deferred(self) -> bool:
        """Answered with type 5 (thinking) or 6 (deferred update)."""
        return self.response_type in (DEFERRED_CHANNEL_MESSAGE, DEFERRED_UPDATE_MESSAGE)

    @property
    def ephemeral(self) -> bool:
        """The initial response was ephemeral (flags 64)."""
        return bool(self.response and self.response.ephemeral)

    @property
    def expired(self) -> bool:
        """The 15-minute token lifetime is over (on the server clock)."""
        lifetime = self.server.rules.token_lifetime
        return lifetime is not None and self.age > lifetime

    @property
    def age(self) -> float:
        return self.server.clock.now() - self.created_at

    @property
    def messages(self) -> list[Message]:
        """Original response (if any) then followups, without duplicates or deleted ones."""
        out: list[Message] = []
        for message in [self.original, *self.followups]:
            if message is not None and not message.deleted and message not in out:
                out.append(message)
        return out

    def describe(self) -> str:
        """Human summary used in timeout messages."""
        lines = [
            f"interaction {self.id} type={self.type} name={self.command_name or self.custom_id!r}"
        ]
        for cb in self.callbacks:
            lines.append(f"  callback type={cb.type} -> {cb.status} at +{cb.at:.2f}s")
        for message in self.messages:
            lines.append(f"  {message!r}")
        for request in self.requests[-10:]:
            lines.append(f"  request {request}")
        for violation in self.violations:
            lines.append(f"  violation {violation}")
        return "\n".join(lines)

    # -- awaiting ------------------------------------------------------------------------------

    async def wait_for(
        self,
        predicate: Callable[[Interaction], Any],
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        what: str = "a condition on the interaction",
    ) -> Any:
        """Await ``predicate(self)`` becoming truthy; returns its value."""
        return await self.server.wait_until(
            lambda: predicate(self),
            timeout=timeout,
            what=f"{what} ({self.command_name or self.custom_id})",
            seen=self.describe,
        )

    async def wait_for_response(
        self,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> CallbackRecord:
        """The first callback attempt, accepted or refused (see ``.accepted``/``.status``)."""
        return await self.wait_for(
            lambda i: i.callbacks[0] if i.callbacks else None,
            timeout=timeout,
            what="the initial response",
        )

    async def wait_for_followup(
        self,
        predicate: Callable[[Message], bool] | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Message:
        """The first followup message (matching ``predicate``, re-checked after edits)."""
        return await self._wait_for_first(
            lambda: (m for m in self.followups if not m.deleted),
            predicate,
            timeout,
            "a followup message",
        )

    async def wait_for_original(
        self,
        predicate: Callable[[Message], bool] | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Message:
        """The ``@original`` message once it is no longer "thinking" and matches ``predicate``."""
        return await self._wait_for_first(
            lambda: (m for m in (self.original,) if m is not None and not m.loading),
            predicate,
            timeout,
            "the original response message",
        )

    async def wait_for_message(
        self,
        predicate: Callable[[Message], bool] | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Message:
        """Any message of this interaction (original or followup) matching ``predicate``."""
        return await self._wait_for_first(
            lambda: (m for m in self.messages if not m.loading),
            predicate,
            timeout,
            "a message of the interaction",
        )

    async def _wait_for_first(
        self,
        candidates: Callable[[], Iterable[Message]],
        predicate: Callable[[Message], bool] | None,
        timeout: float | None,  # noqa: ASYNC109
        what: str,
    ) -> Message:
        """The first of ``candidates()`` matching ``predicate``, re-checked on every change."""
        return await self.wait_for(
            lambda _: next((m for m in candidates() if predicate is None or predicate(m)), None),
            timeout=timeout,
            what=what,
        )


class InteractionLog:
    """Every interaction the server sent, in order, by id and by token (the REST routes find the
    interaction a callback or webhook names here)."""

    def __init__(self, state: State, host: InteractionHost) -> None:
        self.state = state
        self.host = host
        self.all: list[Interaction] = []
        self.by_id: dict[int, Interaction] = {}
        self.by_token: dict[str, Interaction] = {}

    def open(
        self, payload: dict[str, Any], *, source_message: Message | None = None
    ) -> Interaction:
        """The handle of an INTERACTION_CREATE payload about to be sent, kept from now on.

        Who, where and what are read back from the payload (a forged one too), so the handle
        describes what the bot received.
        """
        state = self.state
        guild = state.guilds.get(int(payload["guild_id"])) if payload.get("guild_id") else None
        channel_id = payload.get("channel_id") or (payload.get("channel") or {}).get("id")
        channel = state.channels.get(int(channel_id)) if channel_id else None
        raw_user = (payload.get("member") or {}).get("user") or payload.get("user") or {}
        user = state.users.get(int(raw_user.get("id") or 0)) or User(
            id=int(raw_user.get("id") or 0), name=str(raw_user.get("username", "unknown"))
        )
        data = payload.get("data") or {}
        interaction = Interaction(
            server=self.host,
            id=int(payload["id"]),
            token=str(payload["token"]),
            type=int(payload["type"]),
            payload=payload,
            user=user,
            member=guild.members.get(user.id) if guild else None,
            guild=guild,
            channel=channel,
            created_at=state.clock.now(),
            attachment_size_limit=int(
                payload.get("attachment_size_limit") or DEFAULT_ATTACHMENT_SIZE_LIMIT
            ),
            command_name=data.get("name"),
            custom_id=data.get("custom_id"),
            source_message=source_message,
        )
        self.all.append(interaction)
        self.by_id[interaction.id] = interaction
        self.by_token[interaction.token] = interaction
        return interaction


__all__ = [
    "APPLICATION_COMMAND",
    "AUTOCOMPLETE",
    "AUTOCOMPLETE_RESULT",
    "CHANNEL_MESSAGE",
    "DEFERRED_CHANNEL_MESSAGE",
    "DEFERRED_UPDATE_MESSAGE",
    "MESSAGE_COMPONENT",
    "MODAL",
    "MODAL_SUBMIT",
    "PING",
    "UPDATE_MESSAGE",
    "CallbackRecord",
    "Interaction",
    "InteractionHost",
    "InteractionLog",
]
