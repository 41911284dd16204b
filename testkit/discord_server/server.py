"""``DiscordTestServer``: the object tests hold. Set up the world, drive users, assert outcomes."""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypedDict, TypeVar, Unpack

from aiohttp import web

from .clock import ServerClock
from .commands import CommandRegistry, build_options
from .gateway import (
    CLOSE_UNKNOWN_ERROR,
    DIRECT_MESSAGES,
    GUILD_MEMBERS,
    GUILD_MESSAGES,
    GUILDS,
    INVALID_SESSION,
    MESSAGE_CONTENT,
    RECONNECT,
    Gateway,
)
from .interactions import (
    APPLICATION_COMMAND,
    AUTOCOMPLETE,
    MESSAGE_COMPONENT,
    MODAL_SUBMIT,
    Interaction,
)
from .messages import MessageStore
from .payloads import (
    channel_payload,
    guild_create_payload,
    member_payload,
    message_payload,
    role_payload,
    user_payload,
)
from .recording import FailureInjection, FailureSpec, RecordedRequest
from .rest import API_PREFIX, RestApi, json_response
from .rules import Rules, SlidingWindowLimiter, Violation, ViolationKind
from .state import (
    ADMINISTRATOR,
    DEFAULT_ATTACHMENT_SIZE_LIMIT,
    DEFAULT_BOT_PERMISSIONS,
    Application,
    Attachment,
    Channel,
    Guild,
    GuildOptions,
    Member,
    Message,
    State,
    User,
)
from .waiting import Notifier

#: An action run on a request after it is handled, before its answer leaves.
AnswerHook = Callable[[RecordedRequest], None]
AnswerTest = Callable[[RecordedRequest], bool]

T = TypeVar("T")
UserLike = User | Member


class _Unset:
    """Marker for "pick the only guild/channel" defaults."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


class Invocation(TypedDict, total=False):
    """How a slash command is run, besides by whom and with which options (see
    :meth:`DiscordTestServer.invoke`)."""

    subcommand: str | Sequence[str] | None
    guild: Guild | None
    channel: Channel | None
    locale: str
    attachment_size_limit: int | None
    validate: bool


class DiscordTestServer:
    """A Discord API + gateway on 127.0.0.1 for discord.py end-to-end tests.

    Use as ``async with DiscordTestServer() as server:``; see the package docstring.
    """

    def __init__(
        self,
        *,
        rules: Rules | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        shard_count: int = 1,
        heartbeat_interval_ms: int = 41_250,
        default_timeout: float = 5.0,
    ) -> None:
        self.clock = ServerClock()
        self.state = State(self.clock)
        self.state.listener = self._on_state_change
        self.commands = CommandRegistry(self.state)
        self._rules = rules or Rules()
        self.message_store = MessageStore(self.state, self._rules, self._attachment_url)
        self.gateway = Gateway(
            self, shard_count=shard_count, heartbeat_interval_ms=heartbeat_interval_ms
        )
        self.limiter = SlidingWindowLimiter()
        self.default_timeout = default_timeout
        self.requests: list[RecordedRequest] = []
        """Every REST request, in arrival order."""
        self.violations: list[Violation] = []
        """Rules broken and unimplemented routes hit (see :meth:`assert_clean`)."""
        self.injections: list[FailureInjection] = []
        self._before_answer: list[tuple[str, re.Pattern[str], AnswerHook, AnswerTest]] = []
        self.interactions: list[Interaction] = []
        self.interactions_by_id: dict[int, Interaction] = {}
        self.interactions_by_token: dict[str, Interaction] = {}
        self._notifier = Notifier()
        self._watched: dict[asyncio.Task[Any], str] = {}
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> DiscordTestServer:
        """Bind a free port on ``host`` and start serving."""
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_get("/gateway", self.gateway.handle)
        RestApi(self).install(app)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        self._port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        """Close gateway connections and the HTTP server."""
        await self.gateway.close_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> DiscordTestServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def api_base_url(self) -> str:
        """Value for ``discord.http.Route.BASE``."""
        return self.base_url + API_PREFIX

    @property
    def gateway_url(self) -> str:
        return f"ws://{self._host}:{self._port}/gateway"

    @property
    def rules(self) -> Rules:
        """The enforced rules; mutate fields or assign a new :class:`Rules`."""
        return self._rules

    @rules.setter
    def rules(self, value: Rules) -> None:
        self._rules = value
        self.message_store.rules = value

    # -- the world -----------------------------------------------------------------------------

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

    def create_dm_channel(self, user: UserLike) -> Channel:
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
        return self.commands.list(_id(guild))

    def synced_command(self, name: str, guild: Guild | int | None = None) -> dict[str, Any]:
        """One synced command (guild set first, then global), as stored with ``id``."""
        return self.commands.find(name, _id(guild))

    # -- interactions --------------------------------------------------------------------------

    def build_command_interaction(
        self,
        command: str,
        *,
        user: UserLike,
        options: Mapping[str, Any] | None = None,
        focused: str | None = None,
        **how: Unpack[Invocation],
    ) -> dict[str, Any]:
        """The INTERACTION_CREATE ``d`` that :meth:`invoke` would send (to tamper with, then
        :meth:`dispatch_interaction`); with ``focused``, the autocomplete for that option."""
        subcommand = how.get("subcommand")
        validate = how.get("validate", True)
        guild, channel = self._where(how.get("guild", UNSET), how.get("channel"))
        locale = how.get("locale", "en-US")
        attachment_size_limit = how.get("attachment_size_limit")
        name, *path = command.split()
        if subcommand:
            path += subcommand.split() if isinstance(subcommand, str) else list(subcommand)
        definition = self.commands.find(name, guild.id if guild else None)
        member = self._member(guild, user)
        if validate:
            self._check_command_visible(definition, guild, channel, member)
        built = build_options(
            self.state,
            definition,
            path,
            options or {},
            guild=guild,
            focused=focused,
            validate=validate,
            attachment_url=lambda a: self._attachment_url(a, channel),
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
        payload = self._base_payload(kind, user, guild, channel, locale, attachment_size_limit)
        payload["data"] = data
        return payload

    async def invoke(
        self,
        command: str,
        *,
        user: UserLike,
        options: Mapping[str, Any] | None = None,
        **how: Unpack[Invocation],
    ) -> Interaction:
        """Run ``/command`` as ``user`` (``"quota set"`` or ``subcommand="set"`` for subcommands).

        ``options`` are encoded with the types the bot synced: str, int, bool, float, a
        :class:`User`/:class:`Member` (resolved users/members included), :class:`Channel`,
        :class:`Role`, or :class:`AttachmentOption`. Without ``guild``/``channel`` the only guild
        and its first text channel are used; pass a DM channel for a DM invocation. ``locale``
        (``"en-US"``) and ``attachment_size_limit`` (the guild's) go in the payload;
        ``validate=False`` sends a command the user could not run (Discord would not).
        """
        payload = self.build_command_interaction(command, user=user, options=options, **how)
        return await self.dispatch_interaction(payload)

    async def autocomplete(
        self,
        command: str,
        *,
        user: UserLike,
        focused: str,
        options: Mapping[str, Any] | None = None,
        **how: Unpack[Invocation],
    ) -> Interaction:
        """Send a type-4 autocomplete for option ``focused``; see ``.autocomplete_choices``."""
        values = dict(options or {})
        values.setdefault(focused, "")
        payload = self.build_command_interaction(
            command, user=user, options=values, focused=focused, **how
        )
        return await self.dispatch_interaction(payload)

    async def click(
        self,
        message: Message,
        custom_id: str,
        *,
        user: UserLike,
        values: Sequence[str] | None = None,
        validate: bool = True,
    ) -> Interaction:
        """Press the button (or pick ``values`` in the select) with ``custom_id`` on ``message``.

        ``validate=False`` forges a click Discord would not send (a disabled button, someone
        else's ephemeral message, a ``custom_id`` the message does not have), to test that the
        bot checks who clicked and what.
        """
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
        payload = self._base_payload(MESSAGE_COMPONENT, user, channel.guild, channel, "en-US", None)
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
        return await self.dispatch_interaction(payload, source_message=message)

    async def submit_modal(
        self, interaction: Interaction, values: Mapping[str, str], *, user: UserLike | None = None
    ) -> Interaction:
        """Submit the modal the bot opened on ``interaction`` with text input ``values``."""
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
        payload = self._base_payload(
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
        return await self.dispatch_interaction(payload, source_message=interaction.source_message)

    async def dispatch_interaction(
        self, payload: dict[str, Any], *, source_message: Message | None = None
    ) -> Interaction:
        """Send any INTERACTION_CREATE payload (forged ones too) and track it like the others.

        Sending a payload whose ``id`` was already sent re-delivers that interaction (as after a
        duplicated gateway event) and returns the existing handle, so a second answer from the
        bot is caught as ``already_acknowledged``.
        """
        interaction_id = int(payload["id"])
        guild = self.state.guilds.get(int(payload["guild_id"])) if payload.get("guild_id") else None
        guild_id = guild.id if guild else None
        if self.gateway.session_for(guild_id) is None:
            raise RuntimeError(
                "no gateway session to send the interaction to: "
                "start the bot (and await its readiness) first"
            )
        existing = self.interactions_by_id.get(interaction_id)
        if existing is not None:
            self.gateway.dispatch("INTERACTION_CREATE", payload, guild_id=guild_id)
            return existing
        channel_id = payload.get("channel_id") or (payload.get("channel") or {}).get("id")
        channel = self.state.channels.get(int(channel_id)) if channel_id else None
        raw_user = (payload.get("member") or {}).get("user") or payload.get("user") or {}
        user = self.state.users.get(int(raw_user.get("id") or 0)) or User(
            id=int(raw_user.get("id") or 0), name=str(raw_user.get("username", "unknown"))
        )
        data = payload.get("data") or {}
        interaction = Interaction(
            server=self,
            id=interaction_id,
            token=str(payload["token"]),
            type=int(payload["type"]),
            payload=payload,
            user=user,
            member=guild.members.get(user.id) if guild else None,
            guild=guild,
            channel=channel,
            created_at=self.clock.now(),
            attachment_size_limit=int(
                payload.get("attachment_size_limit") or DEFAULT_ATTACHMENT_SIZE_LIMIT
            ),
            command_name=data.get("name"),
            custom_id=data.get("custom_id"),
            source_message=source_message,
        )
        self.interactions.append(interaction)
        self.interactions_by_id[interaction.id] = interaction
        self.interactions_by_token[interaction.token] = interaction
        self.gateway.dispatch("INTERACTION_CREATE", payload, guild_id=guild_id)
        return interaction

    def interaction(self, interaction_id: int) -> Interaction:
        return self.interactions_by_id[interaction_id]

    # -- gateway -------------------------------------------------------------------------------

    async def dispatch(
        self, event: str, data: Any, *, guild: Guild | int | None = None, intent: int | None = None
    ) -> int | None:
        """Send a raw gateway dispatch to the shard of ``guild``; returns its seq."""
        return self.gateway.dispatch(event, data, guild_id=_id(guild), intent=intent)

    async def drop_gateway(
        self, code: int = CLOSE_UNKNOWN_ERROR, *, shard_id: int | None = None, abrupt: bool = False
    ) -> int:
        """Close the bot's gateway socket (resumable ``code``, or TCP abort with ``abrupt``)."""
        return await self.gateway.drop(code=code, shard_id=shard_id, abrupt=abrupt)

    async def send_reconnect(self, *, shard_id: int | None = None) -> None:
        """Op 7: ask the client to reconnect and resume."""
        await self.gateway.send_op(RECONNECT, None, shard_id=shard_id)

    async def invalidate_session(
        self, *, resumable: bool = False, shard_id: int | None = None
    ) -> None:
        """Op 9: the client must IDENTIFY again (or resume when ``resumable``)."""
        await self.gateway.send_op(INVALID_SESSION, resumable, shard_id=shard_id)

    async def wait_for_identify(
        self,
        count: int = 1,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> None:
        await self.wait_until(
            lambda: self.gateway.identify_count >= count,
            timeout=timeout,
            what=f"{count} IDENTIFY(s)",
        )

    async def wait_for_resume(
        self,
        count: int = 1,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> None:
        await self.wait_until(
            lambda: self.gateway.resume_count >= count, timeout=timeout, what=f"{count} RESUME(s)"
        )

    # -- users doing things --------------------------------------------------------------------

    async def delete_message(self, channel: Channel | int, message: Message | int) -> None:
        """A user (or moderator) deletes a message: it is gone and MESSAGE_DELETE is sent."""
        ch = self.state.channel(channel)
        msg = message if isinstance(message, Message) else self.state.messages[message]
        if msg.channel is not ch:
            raise ValueError(f"{msg!r} is not in {ch!r}")
        self.message_store.delete(msg)
        self.message_event("MESSAGE_DELETE", msg)
        self.notify()

    async def post_message(
        self, channel: Channel | int, user: UserLike, content: str, **fields: Any
    ) -> Message:
        """A user posts a message (MESSAGE_CREATE; content hidden without MESSAGE_CONTENT)."""
        ch = self.state.channel(channel)
        author = self.state.user(user)
        body = {"content": content, **fields}
        message = self.message_store.create(
            ch, author, body, [], size_limit=DEFAULT_ATTACHMENT_SIZE_LIMIT
        )
        self.message_event("MESSAGE_CREATE", message)
        self.notify()
        return message

    def message_event(self, event: str, message: Message) -> None:
        """Send MESSAGE_CREATE/UPDATE/DELETE for a non-ephemeral message, honouring intents."""
        if message.ephemeral:
            return
        guild_id = message.guild_id
        intent = GUILD_MESSAGES if guild_id is not None else DIRECT_MESSAGES
        if event == "MESSAGE_DELETE":
            data: dict[str, Any] = {"id": str(message.id), "channel_id": str(message.channel_id)}
            if guild_id is not None:
                data["guild_id"] = str(guild_id)
        else:
            data = message_payload(message)
            guild = message.channel.guild
            if guild is not None and message.author.id in guild.members:
                data["member"] = member_payload(guild.members[message.author.id], with_user=False)
            session = self.gateway.session_for(guild_id)
            bot = self.state.application.bot if self.state.application else None
            hidden = (
                session is not None
                and not session.intents & MESSAGE_CONTENT
                and guild_id is not None
                and bot is not None
                and message.author.id != bot.id
                and bot.id not in message.pinged_user_ids
            )
            if hidden:
                data.update(content="", embeds=[], attachments=[], components=[])
        self.gateway.dispatch(event, data, guild_id=guild_id, intent=intent)

    def _on_state_change(self, kind: str, obj: Any) -> None:
        if kind == "guild_create":
            self.gateway.dispatch(
                "GUILD_CREATE", guild_create_payload(obj), guild_id=obj.id, intent=GUILDS
            )
        elif kind == "channel_create" and obj.guild is not None:
            self.gateway.dispatch(
                "CHANNEL_CREATE", channel_payload(obj), guild_id=obj.guild.id, intent=GUILDS
            )
        elif kind == "role_create":
            self.gateway.dispatch(
                "GUILD_ROLE_CREATE",
                {"guild_id": str(obj.guild.id), "role": role_payload(obj)},
                guild_id=obj.guild.id,
                intent=GUILDS,
            )
        elif kind == "member_add":
            self.gateway.dispatch(
                "GUILD_MEMBER_ADD",
                {**member_payload(obj), "guild_id": str(obj.guild.id)},
                guild_id=obj.guild.id,
                intent=GUILD_MEMBERS,
            )
        self.notify()

    # -- clock and faults ----------------------------------------------------------------------

    def advance_time(self, seconds: float) -> None:
        """Move the server clock forward (deadlines, token expiry, rate-limit windows)."""
        self.clock.advance(seconds)
        self.notify()

    def inject_failures(
        self, method: str, path_regex: str, failures: Iterable[FailureSpec]
    ) -> FailureInjection:
        """Answer the next requests matching ``method`` (or ``*``) and ``path_regex``
        (``re.search`` on the path after ``/api/v10``) with ``failures`` in order, then recover.

        Each failure is ``(status, retry_after)``, a bare status, or a :class:`Failure`.
        429s carry ``retry_after`` JSON, ``Retry-After``/``X-RateLimit-*`` and ``Via`` headers
        (discord.py only retries 429s that have ``Via``).
        """
        injection = FailureInjection.create(method, path_regex, failures)
        self.injections.append(injection)
        return injection

    def before_answering(
        self,
        method: str,
        path_regex: str,
        action: AnswerHook,
        *,
        when: AnswerTest = lambda _request: True,
    ) -> None:
        """Run ``action`` once, when the next request matching ``method``, ``path_regex`` and
        ``when`` has been handled but before the client gets the answer: e.g. lock the bot's
        database in the window between a post and the bot recording it."""
        self._before_answer.append((method, re.compile(path_regex), action, when))

    def answering(self, record: RecordedRequest) -> None:
        """Used by the REST middleware: run the `before_answering` actions this request is due."""
        for hook in list(self._before_answer):
            method, pattern, action, when = hook
            if (
                method in ("*", record.method)
                and pattern.search(record.path) is not None
                and when(record)
            ):
                self._before_answer.remove(hook)
                action(record)

    def take_injected_failure(
        self, method: str, path: str, record: RecordedRequest
    ) -> web.Response | None:
        """Used by the REST middleware: the forced answer for this request, if one is queued."""
        for injection in self.injections:
            if injection.matches(method, path):
                failure = injection.pending.popleft()
                injection.hits.append(record)
                record.injected = True
                headers: dict[str, str] = {}
                if failure.status == 429:
                    retry_after = failure.body()["retry_after"]
                    headers = {
                        "Retry-After": str(max(1, round(retry_after))),
                        "X-RateLimit-Limit": "5",
                        "X-RateLimit-Remaining": "0",
                        "X-RateLimit-Reset": f"{self.clock.time() + retry_after:.3f}",
                        "X-RateLimit-Reset-After": f"{retry_after:.3f}",
                        "X-RateLimit-Scope": "global" if failure.is_global else "user",
                        "Via": "1.1 google",
                    }
                    if failure.is_global:
                        headers["X-RateLimit-Global"] = "true"
                record.response = failure.body()
                return json_response(failure.body(), failure.status, headers)
        return None

    # -- records and checks --------------------------------------------------------------------

    def requests_to(self, method: str, path_regex: str) -> list[RecordedRequest]:
        """Recorded requests with ``method`` (or ``*``) whose path matches ``path_regex``."""
        pattern = re.compile(path_regex)
        return [
            r
            for r in self.requests
            if method in ("*", r.method) and pattern.search(r.path) is not None
        ]

    @property
    def rate_limited_count(self) -> int:
        """429s given by the edit rate limiter (injected ones not counted)."""
        return sum(1 for r in self.requests if r.rate_limited)

    def violate(
        self,
        kind: str,
        message: str,
        *,
        request: RecordedRequest | None = None,
        interaction: Interaction | None = None,
    ) -> None:
        """Record a broken rule (used by handlers; tests may add their own)."""
        violation = Violation(
            kind=str(kind),
            message=message,
            request=request,
            interaction_id=interaction.id if interaction else None,
        )
        self.violations.append(violation)
        if interaction is not None:
            interaction.violations.append(violation)
        self.notify()

    def watch(self, task: asyncio.Task[Any], name: str = "bot") -> None:
        """Fail waits early (and ``assert_clean``) if ``task`` ends (a crashed ``bot.start()``)."""
        self._watched[task] = name
        task.add_done_callback(lambda _: self.notify())

    def unwatch(self, task: asyncio.Task[Any]) -> None:
        self._watched.pop(task, None)

    def all_violations(self) -> list[Violation]:
        """Recorded violations plus those only known at the end (no response, unused injections,
        crashed watched tasks)."""
        found = list(self.violations)
        if self.rules.require_response:
            for interaction in self.interactions:
                if not interaction.callbacks:
                    found.append(
                        Violation(
                            ViolationKind.NO_RESPONSE,
                            f"interaction {interaction.command_name or interaction.custom_id!r} "
                            "never got a response",
                            interaction_id=interaction.id,
                        )
                    )
        for injection in self.injections:
            if injection.pending:
                found.append(
                    Violation(
                        ViolationKind.UNUSED_INJECTION,
                        f"{len(injection.pending)} injected failure(s) for {injection.method} "
                        f"{injection.pattern.pattern!r} never used",
                    )
                )
        for task, name in self._watched.items():
            if task.done() and not task.cancelled() and task.exception() is not None:
                found.append(
                    Violation(ViolationKind.BOT_CRASHED, f"{name} ended with {task.exception()!r}")
                )
        return found

    def assert_clean(self, *, expected: Iterable[str] = ()) -> None:
        """Raise AssertionError if a rule was broken or an unimplemented route was hit.

        ``expected`` lists violation kinds the test provokes on purpose; each must then have
        happened at least once (so the test proves the rule fired).
        """
        wanted = {str(k) for k in expected}
        violations = self.all_violations()
        problems = [f"unexpected {v}" for v in violations if v.kind not in wanted]
        happened = {v.kind for v in violations}
        problems += [
            f"expected a {kind!r} violation but none happened" for kind in sorted(wanted - happened)
        ]
        if problems:
            raise AssertionError(
                "Discord test server found problems:\n  - "
                + "\n  - ".join(problems)
                + "\n"
                + self.describe()
            )

    def describe(self, last: int = 15) -> str:
        """Recent requests, interactions and violations, for failure messages."""
        lines = [f"last {min(last, len(self.requests))} of {len(self.requests)} requests:"]
        lines += [f"    {r}" for r in self.requests[-last:]]
        if self.interactions:
            lines.append("interactions:")
            lines += ["    " + i.describe().replace("\n", "\n    ") for i in self.interactions[-5:]]
        if self.violations:
            lines.append("violations:")
            lines += [f"    {v}" for v in self.violations]
        lines.append(
            f"gateway: identify={self.gateway.identify_count} resume={self.gateway.resume_count} "
            f"connected={self.gateway.connected}"
        )
        return "\n".join(lines)

    # -- waiting -------------------------------------------------------------------------------

    def notify(self) -> None:
        """Wake waiters; call after changing state from a test by hand."""
        self._notifier.notify()

    async def wait_until(
        self,
        predicate: Callable[[], T | None],
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        what: str = "a condition",
        seen: Callable[[], str] | None = None,
    ) -> T:
        """Await ``predicate()`` becoming truthy (re-checked on every server change)."""
        return await self._notifier.wait_for(
            predicate,
            timeout=self.default_timeout if timeout is None else timeout,
            what=what,
            seen=seen or self.describe,
            abort=self._abort_reason,
        )

    async def wait_for_message(
        self,
        channel: Channel | int,
        predicate: Callable[[Message], bool] | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Message:
        """The first message in ``channel`` (existing or future, not deleted or "thinking")
        that matches ``predicate``; edits are re-checked."""
        ch = self.state.channel(channel)

        def check() -> Message | None:
            return next(
                (
                    m
                    for m in ch.visible_messages()
                    if not m.loading and (predicate is None or predicate(m))
                ),
                None,
            )

        def seen() -> str:
            return (
                f"messages in {ch!r}:\n"
                + "\n".join(f"    {m!r}" for m in ch.messages)
                + "\n"
                + self.describe()
            )

        return await self.wait_until(check, timeout=timeout, what=f"a message in {ch!r}", seen=seen)

    async def wait_for_request(
        self,
        method: str,
        path_regex: str,
        *,
        status: int | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> RecordedRequest:
        """The first recorded request (past or future) matching, optionally with ``status``."""

        def check() -> RecordedRequest | None:
            return next(
                (
                    r
                    for r in self.requests_to(method, path_regex)
                    if r.status and (status is None or r.status == status)
                ),
                None,
            )

        return await self.wait_until(
            check, timeout=timeout, what=f"a {method} {path_regex} request"
        )

    def _abort_reason(self) -> str | None:
        for task, name in self._watched.items():
            if task.done():
                if task.cancelled():
                    return f"{name} was cancelled"
                exc = task.exception()
                return f"{name} ended with {exc!r}" if exc else f"{name} returned"
        return None

    # -- helpers -------------------------------------------------------------------------------

    def _attachment_url(self, attachment: Attachment, channel: Channel | None) -> str:
        channel_id = channel.id if channel is not None else 0
        return f"{self.base_url}/attachments/{channel_id}/{attachment.id}/{attachment.filename}"

    def _where(self, guild: Guild | None, channel: Channel | None) -> tuple[Guild | None, Channel]:
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

    def _member(self, guild: Guild | None, user: UserLike) -> Member | None:
        if guild is None:
            return None
        member = guild.members.get(self.state.user(user).id)
        if member is None:
            raise ValueError(
                f"{user!r} is not a member of {guild!r}; call guild.add_member(user) first"
            )
        return member

    def _check_command_visible(
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

    def _base_payload(
        self,
        kind: int,
        user: UserLike,
        guild: Guild | None,
        channel: Channel | None,
        locale: str,
        attachment_size_limit: int | None,
    ) -> dict[str, Any]:
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
            member = self._member(guild, who)
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


def _id(obj: Guild | int | None) -> int | None:
    if obj is None or isinstance(obj, int):
        return obj
    return obj.id


__all__ = ["UNSET", "DiscordTestServer", "Invocation"]
