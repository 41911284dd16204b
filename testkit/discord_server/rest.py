"""The REST routes discord.py 2.7 uses for login, command sync and interaction responses.

A middleware records every request, answers injected failures first and turns
:class:`~testkit.discord_server.errors.ApiError` into Discord-shaped JSON errors (recording the
violation). Anything not routed here answers 404 and is recorded as ``unimplemented``.
"""

from __future__ import annotations

import json
import math
import traceback
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import BodyPartReader, web

from .errors import (
    ALREADY_ACKNOWLEDGED,
    GENERAL_ERROR,
    INVALID_FORM_BODY,
    INVALID_WEBHOOK_TOKEN,
    MISSING_PERMISSIONS,
    UNKNOWN_APPLICATION_COMMAND,
    UNKNOWN_CHANNEL,
    UNKNOWN_GUILD,
    UNKNOWN_INTERACTION,
    UNKNOWN_MESSAGE,
    UNKNOWN_USER,
    UNKNOWN_WEBHOOK,
    ApiError,
    form_error,
)
from .interactions import (
    APPLICATION_COMMAND,
    AUTOCOMPLETE,
    AUTOCOMPLETE_RESULT,
    CHANNEL_MESSAGE,
    DEFERRED_CHANNEL_MESSAGE,
    DEFERRED_UPDATE_MESSAGE,
    MESSAGE_COMPONENT,
    MODAL,
    MODAL_SUBMIT,
    UPDATE_MESSAGE,
    CallbackRecord,
    Interaction,
)
from .payloads import (
    application_payload,
    bot_user_payload,
    channel_payload,
    guild_payload,
    member_payload,
    message_payload,
    role_payload,
    user_payload,
)
from .recording import RecordedRequest, UploadedFile
from .rules import RateDecision, ViolationKind
from .state import (
    DEFAULT_ATTACHMENT_SIZE_LIMIT,
    FLAG_EPHEMERAL,
    FLAG_LOADING,
    MANAGE_MESSAGES,
    Channel,
    Guild,
    Message,
)

if TYPE_CHECKING:
    from .server import DiscordTestServer

API_PREFIX = "/api/v10"
UNKNOWN_APPLICATION = 10002
UNKNOWN_MEMBER = 10007
CANNOT_EDIT_OTHERS = 50005

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Per-request storage filled by the middleware for the handlers.
RECORD = web.RequestKey("record", RecordedRequest)
BODY = web.RequestKey("body", object)
FILES = web.RequestKey("files", list)
INTERACTION = web.RequestKey("interaction", Interaction)

# Which callback types each interaction type accepts.
ALLOWED_CALLBACKS: dict[int, set[int]] = {
    APPLICATION_COMMAND: {CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE, MODAL},
    MESSAGE_COMPONENT: {
        CHANNEL_MESSAGE,
        DEFERRED_CHANNEL_MESSAGE,
        DEFERRED_UPDATE_MESSAGE,
        UPDATE_MESSAGE,
        MODAL,
    },
    AUTOCOMPLETE: {AUTOCOMPLETE_RESULT},
    MODAL_SUBMIT: {
        CHANNEL_MESSAGE,
        DEFERRED_CHANNEL_MESSAGE,
        DEFERRED_UPDATE_MESSAGE,
        UPDATE_MESSAGE,
    },
}


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """JSON with ``Content-Type`` exactly ``application/json`` (discord.py compares it verbatim)."""
    return web.Response(
        body=json.dumps(data).encode(),
        status=status,
        headers={"Content-Type": "application/json", **(headers or {})},
    )


def _snowflake(request: web.Request, name: str) -> int:
    """A numeric path parameter; anything else can match no object (-1)."""
    raw = request.match_info[name]
    return int(raw) if raw.isdigit() else -1


def no_content() -> web.Response:
    return web.Response(status=204)


async def parse_body(request: web.Request) -> tuple[Any, list[UploadedFile]]:
    """JSON body, or a multipart ``payload_json`` part plus ``files[N]`` parts."""
    if request.content_type.startswith("multipart/"):
        reader = await request.multipart()
        payload: Any = None
        files: list[UploadedFile] = []
        while True:
            part = await reader.next()
            if part is None:
                break
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == "payload_json":
                payload = json.loads(await part.text())
            else:
                data = bytes(await part.read(decode=False))
                files.append(
                    UploadedFile(
                        field_name=part.name or "",
                        filename=part.filename or part.name or "file",
                        data=data,
                        content_type=part.headers.get("Content-Type"),
                    )
                )
        return payload, files
    if not request.body_exists:
        return None, []
    raw = await request.read()
    if not raw:
        return None, []
    if request.content_type == "application/json":
        return json.loads(raw), []
    return raw.decode(errors="replace"), []


class RestApi:
    """Route handlers bound to one server."""

    def __init__(self, server: DiscordTestServer) -> None:
        self.server = server
        self.state = server.state

    # -- wiring --------------------------------------------------------------------------------

    def install(self, app: web.Application) -> None:
        app.middlewares.append(self.middleware)
        p = API_PREFIX
        routes: list[tuple[str, str, Handler]] = [
            ("GET", "/gateway", self.get_gateway),
            ("GET", "/gateway/bot", self.get_gateway_bot),
            ("GET", "/users/@me", self.get_me),
            ("POST", "/users/@me/channels", self.create_dm),
            ("GET", "/users/{user_id}", self.get_user),
            ("GET", "/oauth2/applications/@me", self.get_application),
            ("GET", "/applications/@me", self.get_application),
            ("POST", "/interactions/{interaction_id}/{token}/callback", self.interaction_callback),
            ("POST", "/webhooks/{app_id}/{token}", self.execute_webhook),
            ("GET", "/webhooks/{app_id}/{token}/messages/{message_id}", self.get_webhook_message),
            (
                "PATCH",
                "/webhooks/{app_id}/{token}/messages/{message_id}",
                self.edit_webhook_message,
            ),
            (
                "DELETE",
                "/webhooks/{app_id}/{token}/messages/{message_id}",
                self.delete_webhook_message,
            ),
            ("GET", "/channels/{channel_id}", self.get_channel),
            ("GET", "/channels/{channel_id}/messages", self.list_messages),
            ("POST", "/channels/{channel_id}/messages", self.create_message),
            ("GET", "/channels/{channel_id}/messages/{message_id}", self.get_message),
            ("PATCH", "/channels/{channel_id}/messages/{message_id}", self.edit_message),
            ("DELETE", "/channels/{channel_id}/messages/{message_id}", self.delete_message),
            ("POST", "/channels/{channel_id}/typing", self.typing),
            ("GET", "/guilds/{guild_id}", self.get_guild),
            ("GET", "/guilds/{guild_id}/channels", self.get_guild_channels),
            ("GET", "/guilds/{guild_id}/roles", self.get_guild_roles),
            ("GET", "/guilds/{guild_id}/members/{user_id}", self.get_member),
        ]
        # Global commands and one guild's commands: the same routes under two prefixes.
        for commands in ("/applications/{app_id}", "/applications/{app_id}/guilds/{guild_id}"):
            routes += [
                ("GET", commands + "/commands", self.list_commands),
                ("PUT", commands + "/commands", self.put_commands),
                ("POST", commands + "/commands", self.upsert_command),
                ("GET", commands + "/commands/{command_id}", self.get_command),
                ("PATCH", commands + "/commands/{command_id}", self.edit_command),
                ("DELETE", commands + "/commands/{command_id}", self.delete_command),
            ]
        for method, path, handler in routes:
            app.router.add_route(method, p + path, handler)
        app.router.add_get(
            "/attachments/{channel_id}/{attachment_id}/{filename}", self.get_attachment
        )
        app.router.add_route("*", "/{tail:.*}", self.unimplemented)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/gateway":
            return await handler(request)
        path = (
            request.path[len(API_PREFIX) :] if request.path.startswith(API_PREFIX) else request.path
        )
        server = self.server
        try:
            body, files = await parse_body(request)
        except (ValueError, UnicodeDecodeError) as exc:
            body, files = f"<unparseable body: {exc}>", []
        record = RecordedRequest(
            method=request.method,
            path=path,
            query=dict(request.query),
            json=body,
            files=files,
            at=server.clock.now(),
            authorization=request.headers.get("Authorization"),
        )
        server.requests.append(record)
        request[RECORD] = record
        request[BODY] = body if isinstance(body, dict | list) else None
        request[FILES] = files
        try:
            injected = server.take_injected_failure(request.method, path, record)
            if injected is not None:
                response: web.StreamResponse = injected
            else:
                response = await handler(request)
        except ApiError as error:
            record.response = error.body()
            response = json_response(error.body(), error.status, error.headers)
            if error.violation:
                server.violate(
                    error.violation,
                    error.detail,
                    request=record,
                    interaction=request.get(INTERACTION),
                )
        except Exception as exc:  # a bug in this server: fail the test loudly, the client fast
            detail = "".join(traceback.format_exception(exc))
            server.violate(ViolationKind.SERVER_BUG, detail, request=record)
            response = json_response({"message": f"test server bug: {exc!r}", "code": 0}, 400)
        record.status = response.status
        server.answering(record)
        if (
            record.response is None
            and isinstance(response, web.Response)
            and response.content_type == "application/json"
            and isinstance(response.body, bytes)
        ):
            record.response = json.loads(response.body)
        server.notify()
        return response

    # -- helpers -------------------------------------------------------------------------------

    def _require_auth(self, request: web.Request) -> None:
        app = self.state.application
        if app is None or request.headers.get("Authorization") != f"Bot {app.token}":
            raise ApiError(401, GENERAL_ERROR, "401: Unauthorized")

    def _require_app(self, request: web.Request) -> None:
        self._require_auth(request)
        app = self.state.require_application()
        if request.match_info["app_id"] != str(app.id):
            raise ApiError(404, UNKNOWN_APPLICATION, "Unknown Application")

    def _channel(self, request: web.Request) -> Channel:
        try:
            return self.state.channels[_snowflake(request, "channel_id")]
        except KeyError:
            raise ApiError(404, UNKNOWN_CHANNEL, "Unknown Channel") from None

    def _body(self, request: web.Request) -> dict[str, Any]:
        body = request[BODY]
        if not isinstance(body, dict):
            raise ApiError(
                400,
                INVALID_FORM_BODY,
                "Invalid Form Body",
                violation=ViolationKind.INVALID_PAYLOAD,
                detail="expected a JSON object body",
            )
        return body

    def _edit_rate_limit(self, request: web.Request, channel: Channel) -> dict[str, str]:
        """Count an edit against the channel's window; 429 (with headers) when it is full."""
        rule = self.server.rules.edit_rate_limit
        if rule is None:
            return {}
        decision = self.server.limiter.hit(f"edit:{channel.id}", rule, self.server.clock.now())
        headers = (
            self._rate_headers(decision, channel.id) if self.server.rules.rate_limit_headers else {}
        )
        if decision.allowed:
            return headers
        record: RecordedRequest = request[RECORD]
        record.rate_limited = True
        retry_after = round(decision.reset_after, 3)
        headers = {
            **self._rate_headers(decision, channel.id),
            "Retry-After": str(math.ceil(retry_after)),
        }
        raise ApiError(
            429,
            GENERAL_ERROR,
            "You are being rate limited.",
            violation=ViolationKind.RATE_LIMITED
            if self.server.rules.rate_limit_is_violation
            else None,
            detail=f"more than {rule.count} edits per {rule.per}s in channel {channel.id}",
            headers=headers,
            body={
                "message": "You are being rate limited.",
                "retry_after": retry_after,
                "global": False,
                "code": 0,
            },
        )

    def _rate_headers(self, decision: RateDecision, channel_id: int) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(decision.limit),
            "X-RateLimit-Remaining": str(decision.remaining),
            "X-RateLimit-Reset": f"{self.server.clock.time() + decision.reset_after:.3f}",
            "X-RateLimit-Reset-After": f"{decision.reset_after:.3f}",
            "X-RateLimit-Bucket": f"edit-{channel_id}",
            "X-RateLimit-Scope": "user",
            "Via": "1.1 google",
        }

    def _size_limit(self, channel: Channel) -> int:
        return (
            channel.guild.attachment_size_limit if channel.guild else DEFAULT_ATTACHMENT_SIZE_LIMIT
        )

    # -- gateway, users, application -----------------------------------------------------------

    async def get_gateway(self, request: web.Request) -> web.Response:
        return json_response({"url": self.server.gateway_url})

    async def get_gateway_bot(self, request: web.Request) -> web.Response:
        self._require_auth(request)
        return json_response(
            {
                "url": self.server.gateway_url,
                "shards": self.server.gateway.shard_count,
                "session_start_limit": {
                    "total": 1000,
                    "remaining": 999,
                    "reset_after": 14_400_000,
                    "max_concurrency": 1,
                },
            }
        )

    async def get_me(self, request: web.Request) -> web.Response:
        self._require_auth(request)
        return json_response(bot_user_payload(self.state.require_application().bot))

    async def get_user(self, request: web.Request) -> web.Response:
        self._require_auth(request)
        user = self.state.users.get(_snowflake(request, "user_id"))
        if user is None:
            raise ApiError(404, UNKNOWN_USER, "Unknown User")
        return json_response(user_payload(user))

    async def create_dm(self, request: web.Request) -> web.Response:
        self._require_auth(request)
        body = self._body(request)
        user = self.state.users.get(int(body.get("recipient_id") or 0))
        if user is None:
            raise ApiError(404, UNKNOWN_USER, "Unknown User")
        return json_response(channel_payload(self.state.create_dm_channel(user)))

    async def get_application(self, request: web.Request) -> web.Response:
        self._require_auth(request)
        return json_response(application_payload(self.state.require_application()))

    # -- commands ------------------------------------------------------------------------------

    def _guild_id(self, request: web.Request) -> int | None:
        if "guild_id" not in request.match_info:
            return None
        guild_id = _snowflake(request, "guild_id")
        if guild_id not in self.state.guilds:
            raise ApiError(404, UNKNOWN_GUILD, "Unknown Guild")
        return guild_id

    async def list_commands(self, request: web.Request) -> web.Response:
        self._require_app(request)
        return json_response(self.server.commands.list(self._guild_id(request)))

    async def put_commands(self, request: web.Request) -> web.Response:
        self._require_app(request)
        body = request[BODY]
        if not isinstance(body, list):
            raise ApiError(
                400,
                INVALID_FORM_BODY,
                "Invalid Form Body",
                violation=ViolationKind.INVALID_PAYLOAD,
                detail="bulk overwrite expects a JSON array",
            )
        stored = self.server.commands.bulk_overwrite(
            body, guild_id=self._guild_id(request), validate=self.server.rules.validate_payloads
        )
        return json_response(stored)

    def _find_command(self, request: web.Request) -> tuple[int | None, dict[str, Any]]:
        guild_id = self._guild_id(request)
        for command in self.server.commands.list(guild_id):
            if command["id"] == request.match_info["command_id"]:
                return guild_id, command
        raise ApiError(404, UNKNOWN_APPLICATION_COMMAND, "Unknown application command")

    async def get_command(self, request: web.Request) -> web.Response:
        self._require_app(request)
        return json_response(self._find_command(request)[1])

    async def upsert_command(self, request: web.Request) -> web.Response:
        self._require_app(request)
        body = self._body(request)
        guild_id = self._guild_id(request)
        current = [c for c in self.server.commands.list(guild_id) if c["name"] != body.get("name")]
        existed = len(current) != len(self.server.commands.list(guild_id))
        stored = self.server.commands.bulk_overwrite(
            [*current, body], guild_id=guild_id, validate=self.server.rules.validate_payloads
        )
        command = next(c for c in stored if c["name"] == body.get("name"))
        return json_response(command, 200 if existed else 201)

    async def edit_command(self, request: web.Request) -> web.Response:
        self._require_app(request)
        _, command = self._find_command(request)
        command.update(self._body(request))
        return json_response(command)

    async def delete_command(self, request: web.Request) -> web.Response:
        self._require_app(request)
        guild_id, command = self._find_command(request)
        remaining = [c for c in self.server.commands.list(guild_id) if c is not command]
        self.server.commands.bulk_overwrite(remaining, guild_id=guild_id, validate=False)
        return no_content()

    # -- interactions --------------------------------------------------------------------------

    async def interaction_callback(self, request: web.Request) -> web.Response:
        server = self.server
        record: RecordedRequest = request[RECORD]
        interaction = server.interactions_by_id.get(_snowflake(request, "interaction_id"))
        if interaction is None or interaction.token != request.match_info["token"]:
            raise ApiError(
                404,
                UNKNOWN_INTERACTION,
                "Unknown interaction",
                violation=ViolationKind.INVALID_CALLBACK,
                detail="callback for an interaction id/token the server never sent",
            )
        request[INTERACTION] = interaction
        interaction.requests.append(record)
        body = self._body(request)
        callback_type = int(body.get("type") or 0)
        data = body.get("data")
        files: list[UploadedFile] = request[FILES]
        callback = CallbackRecord(
            type=callback_type,
            data=data,
            files=files,
            status=0,
            accepted=False,
            at=interaction.age,
            request=record,
        )
        interaction.callbacks.append(callback)
        try:
            message = self._apply_callback(interaction, callback_type, data or {}, files)
        except ApiError as error:
            callback.status = error.status
            raise
        callback.accepted = True
        interaction.response = callback
        with_response = request.query.get("with_response", "").lower() in ("1", "true")
        callback.status = 200 if with_response else 204
        if not with_response:
            return no_content()
        answer: dict[str, Any] = {
            "interaction": {
                "id": str(interaction.id),
                "type": interaction.type,
                "response_message_loading": callback_type == DEFERRED_CHANNEL_MESSAGE,
                "response_message_ephemeral": bool(message and message.ephemeral),
            }
        }
        resource: dict[str, Any] = {"type": callback_type}
        if message is not None and callback_type in (
            CHANNEL_MESSAGE,
            DEFERRED_CHANNEL_MESSAGE,
            UPDATE_MESSAGE,
        ):
            answer["interaction"]["response_message_id"] = str(message.id)
            resource["message"] = message_payload(message)
        answer["resource"] = resource
        return json_response(answer)

    def _apply_callback(
        self,
        interaction: Interaction,
        callback_type: int,
        data: dict[str, Any],
        files: list[UploadedFile],
    ) -> Message | None:
        server = self.server
        rules = server.rules
        if interaction.response is not None and rules.single_initial_response:
            raise ApiError(
                400,
                ALREADY_ACKNOWLEDGED,
                "Interaction has already been acknowledged.",
                violation=ViolationKind.ALREADY_ACKNOWLEDGED,
                detail=f"second initial response (type {callback_type})",
            )
        if (
            interaction.response is None
            and rules.response_deadline is not None
            and interaction.age > rules.response_deadline
        ):
            raise ApiError(
                404,
                UNKNOWN_INTERACTION,
                "Unknown interaction",
                violation=ViolationKind.LATE_RESPONSE,
                detail=f"first response after {interaction.age:.2f}s "
                f"(limit {rules.response_deadline}s)",
            )
        allowed = ALLOWED_CALLBACKS.get(interaction.type, set())
        if callback_type not in allowed:
            raise ApiError(
                400,
                INVALID_FORM_BODY,
                "Invalid Form Body",
                violation=ViolationKind.INVALID_CALLBACK,
                detail=f"callback type {callback_type} not allowed for "
                f"interaction type {interaction.type}",
                errors={
                    "type": {
                        "_errors": [
                            {
                                "code": "INTERACTION_RESPONSE_TYPE_INVALID",
                                "message": "Interaction response type is invalid",
                            }
                        ]
                    }
                },
            )
        app = self.state.require_application()
        channel = interaction.channel
        if callback_type in (CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE):
            if channel is None:
                raise ApiError(
                    400, INVALID_FORM_BODY, "Invalid Form Body", detail="interaction has no channel"
                )
            flags = int(data.get("flags") or 0) & FLAG_EPHEMERAL
            if callback_type == DEFERRED_CHANNEL_MESSAGE:
                flags |= FLAG_LOADING
            message = server.message_store.create(
                channel,
                app.bot,
                data if callback_type == CHANNEL_MESSAGE else {},
                files,
                size_limit=interaction.attachment_size_limit,
                flags=flags if callback_type == DEFERRED_CHANNEL_MESSAGE else None,
                validate=callback_type == CHANNEL_MESSAGE,
                interaction=interaction,
                webhook_id=app.id,
                application_id=app.id,
                message_type=20 if interaction.type == APPLICATION_COMMAND else 0,
            )
            interaction.original = message
            server.message_event("MESSAGE_CREATE", message)
            return message
        if callback_type in (DEFERRED_UPDATE_MESSAGE, UPDATE_MESSAGE):
            target = interaction.source_message
            if target is None:
                raise ApiError(
                    400,
                    INVALID_FORM_BODY,
                    "Invalid Form Body",
                    violation=ViolationKind.INVALID_CALLBACK,
                    detail="update callback for an interaction without a message",
                )
            interaction.original = target
            if callback_type == UPDATE_MESSAGE:
                server.message_store.edit(
                    target, data, files, size_limit=interaction.attachment_size_limit
                )
                server.message_event("MESSAGE_UPDATE", target)
            return target
        if callback_type == AUTOCOMPLETE_RESULT:
            interaction.autocomplete_choices = list(data.get("choices") or [])
        elif callback_type == MODAL:
            interaction.modal = data
        return None

    def _webhook_interaction(self, request: web.Request) -> Interaction:
        """The interaction behind ``/webhooks/{app_id}/{token}``, with Discord's token checks."""
        server = self.server
        record: RecordedRequest = request[RECORD]
        app = self.state.require_application()
        interaction = server.interactions_by_token.get(request.match_info["token"])
        if interaction is None or request.match_info["app_id"] != str(app.id):
            raise ApiError(
                404,
                UNKNOWN_WEBHOOK,
                "Unknown Webhook",
                violation=ViolationKind.INVALID_CALLBACK,
                detail="webhook token of no interaction",
            )
        request[INTERACTION] = interaction
        interaction.requests.append(record)
        if interaction.expired:
            raise ApiError(
                401,
                INVALID_WEBHOOK_TOKEN,
                "Invalid Webhook Token",
                violation=ViolationKind.TOKEN_EXPIRED,
                detail=f"interaction token used {interaction.age:.0f}s after creation",
            )
        if server.rules.require_ack_before_followup and interaction.response is None:
            raise ApiError(
                404,
                UNKNOWN_WEBHOOK,
                "Unknown Webhook",
                violation=ViolationKind.FOLLOWUP_BEFORE_ACK,
                detail="webhook route used before the interaction was acknowledged",
            )
        return interaction

    def _interaction_message(self, request: web.Request, interaction: Interaction) -> Message:
        message_id = request.match_info["message_id"]
        if message_id == "@original":
            message = interaction.original
        else:
            message = next((m for m in interaction.messages if str(m.id) == message_id), None)
        if message is None or message.deleted:
            raise ApiError(404, UNKNOWN_MESSAGE, "Unknown Message")
        return message

    async def execute_webhook(self, request: web.Request) -> web.Response:
        server = self.server
        interaction = self._webhook_interaction(request)
        body = self._body(request)
        files: list[UploadedFile] = request[FILES]
        app = self.state.require_application()
        original = interaction.original
        if (
            original is not None
            and original.loading
            and interaction.response_type == DEFERRED_CHANNEL_MESSAGE
        ):
            # After a "thinking" defer the first followup replaces the thinking message.
            message = server.message_store.edit(
                original, body, files, size_limit=interaction.attachment_size_limit
            )
            server.message_event("MESSAGE_UPDATE", message)
        else:
            channel = interaction.channel
            if channel is None:
                raise ApiError(
                    400, INVALID_FORM_BODY, "Invalid Form Body", detail="interaction has no channel"
                )
            message = server.message_store.create(
                channel,
                app.bot,
                body,
                files,
                size_limit=interaction.attachment_size_limit,
                interaction=interaction,
                webhook_id=app.id,
                application_id=app.id,
                message_type=20 if interaction.type == APPLICATION_COMMAND else 0,
            )
            server.message_event("MESSAGE_CREATE", message)
        interaction.followups.append(message)
        if request.query.get("wait", "").lower() in ("1", "true"):
            return json_response(message_payload(message))
        return no_content()

    async def get_webhook_message(self, request: web.Request) -> web.Response:
        interaction = self._webhook_interaction(request)
        return json_response(message_payload(self._interaction_message(request, interaction)))

    async def edit_webhook_message(self, request: web.Request) -> web.Response:
        interaction = self._webhook_interaction(request)
        message = self._interaction_message(request, interaction)
        headers = self._edit_rate_limit(request, message.channel)
        self.server.message_store.edit(
            message,
            self._body(request),
            request[FILES],
            size_limit=interaction.attachment_size_limit,
        )
        self.server.message_event("MESSAGE_UPDATE", message)
        return json_response(message_payload(message), headers=headers)

    async def delete_webhook_message(self, request: web.Request) -> web.Response:
        interaction = self._webhook_interaction(request)
        message = self._interaction_message(request, interaction)
        self.server.message_store.delete(message)
        self.server.message_event("MESSAGE_DELETE", message)
        return no_content()

    # -- channels ------------------------------------------------------------------------------

    def _channel_message(self, request: web.Request, channel: Channel) -> Message:
        message = self.state.messages.get(_snowflake(request, "message_id"))
        if (
            message is None
            or message.deleted
            or message.ephemeral
            or message.channel is not channel
        ):
            raise ApiError(404, UNKNOWN_MESSAGE, "Unknown Message")
        return message

    async def get_channel(self, request: web.Request) -> web.Response:
        self._require_auth(request)
        return json_response(channel_payload(self._channel(request)))

    async def list_messages(self, request: web.Request) -> web.Response:
        """A channel's history as Discord pages it: `limit` from 1 to 100 (50 by default), and
        at most one of `before`, `after` and `around`; the `limit` messages nearest that
        point (the newest without one), always newest first. A client pages on from the
        last id it got."""
        self._require_auth(request)
        channel = self._channel(request)
        q = request.query
        limit = _query_int(q, "limit", 50, 1, 100)
        anchors = [key for key in ("before", "after", "around") if key in q]
        if len(anchors) > 1:
            raise form_error(anchors[1], "before, after and around are mutually exclusive")
        point = _query_int(q, anchors[0], 0, 0, 2**64 - 1) if anchors else None
        messages = [m for m in channel.visible_messages() if not m.ephemeral]  # oldest first
        if point is None:
            page = messages[-limit:]
        elif anchors[0] == "before":
            page = [m for m in messages if m.id < point][-limit:]
        elif anchors[0] == "after":
            page = [m for m in messages if m.id > point][:limit]
        else:  # around: the message (if any) in the middle of the page
            middle = next((i for i, m in enumerate(messages) if m.id >= point), len(messages))
            start = max(0, min(middle - limit // 2, len(messages) - limit))
            page = messages[start : start + limit]
        return json_response([message_payload(m) for m in reversed(page)])

    async def create_message(self, request: web.Request) -> web.Response:
        self._require_auth(request)
        channel = self._channel(request)
        if not channel.bot_can_send:
            raise ApiError(
                403,
                MISSING_PERMISSIONS,
                "Missing Permissions",
                violation=ViolationKind.MISSING_PERMISSIONS,
                detail=f"the bot may not send in {channel.name!r}",
            )
        app = self.state.require_application()
        message = self.server.message_store.create(
            channel,
            app.bot,
            self._body(request),
            request[FILES],
            size_limit=self._size_limit(channel),
        )
        self.server.message_event("MESSAGE_CREATE", message)
        return json_response(message_payload(message))

    async def get_message(self, request: web.Request) -> web.Response:
        self._require_auth(request)
        channel = self._channel(request)
        return json_response(message_payload(self._channel_message(request, channel)))

    async def edit_message(self, request: web.Request) -> web.Response:
        self._require_auth(request)
        channel = self._channel(request)
        message = self._channel_message(request, channel)
        app = self.state.require_application()
        if message.author.id != app.bot.id:
            raise ApiError(
                403,
                CANNOT_EDIT_OTHERS,
                "Cannot edit a message authored by another user",
                violation=ViolationKind.MISSING_PERMISSIONS,
            )
        headers = self._edit_rate_limit(request, channel)
        self.server.message_store.edit(
            message, self._body(request), request[FILES], size_limit=self._size_limit(channel)
        )
        self.server.message_event("MESSAGE_UPDATE", message)
        return json_response(message_payload(message), headers=headers)

    async def delete_message(self, request: web.Request) -> web.Response:
        self._require_auth(request)
        channel = self._channel(request)
        message = self._channel_message(request, channel)
        app = self.state.require_application()
        if message.author.id != app.bot.id:
            bot_member = channel.guild.members.get(app.bot.id) if channel.guild else None
            if bot_member is None or not bot_member.permissions & MANAGE_MESSAGES:
                raise ApiError(
                    403,
                    MISSING_PERMISSIONS,
                    "Missing Permissions",
                    violation=ViolationKind.MISSING_PERMISSIONS,
                )
        self.server.message_store.delete(message)
        self.server.message_event("MESSAGE_DELETE", message)
        return no_content()

    async def typing(self, request: web.Request) -> web.Response:
        self._require_auth(request)
        self._channel(request)
        return no_content()

    # -- guilds --------------------------------------------------------------------------------

    def _guild(self, request: web.Request) -> Guild:
        guild = self.state.guilds.get(_snowflake(request, "guild_id"))
        if guild is None:
            raise ApiError(404, UNKNOWN_GUILD, "Unknown Guild")
        return guild

    async def get_guild(self, request: web.Request) -> web.Response:
        self._require_auth(request)
        return json_response(guild_payload(self._guild(request)))

    async def get_guild_channels(self, request: web.Request) -> web.Response:
        self._require_auth(request)
        return json_response([channel_payload(c) for c in self._guild(request).channels])

    async def get_guild_roles(self, request: web.Request) -> web.Response:
        self._require_auth(request)
        return json_response([role_payload(r) for r in self._guild(request).roles])

    async def get_member(self, request: web.Request) -> web.Response:
        self._require_auth(request)
        guild = self._guild(request)
        member = guild.members.get(_snowflake(request, "user_id"))
        if member is None:
            raise ApiError(404, UNKNOWN_MEMBER, "Unknown Member")
        return json_response(member_payload(member))

    # -- files and the rest --------------------------------------------------------------------

    async def get_attachment(self, request: web.Request) -> web.Response:
        attachment = self.state.attachments.get(_snowflake(request, "attachment_id"))
        if attachment is None or attachment.filename != request.match_info["filename"]:
            return web.Response(status=404, text="attachment not found")
        return web.Response(
            body=attachment.data, content_type=attachment.content_type or "application/octet-stream"
        )

    async def unimplemented(self, request: web.Request) -> web.Response:
        record: RecordedRequest | None = request.get(RECORD)
        self.server.violate(
            ViolationKind.UNIMPLEMENTED,
            f"{request.method} {request.path} is not implemented",
            request=record,
        )
        return json_response({"message": "404: Not Found", "code": 0}, 404)


def _query_int(query: Any, key: str, default: int, low: int, high: int) -> int:
    """A whole-number query parameter within [low, high], else Discord's 400 for the field."""
    raw = query.get(key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise form_error(key, f'Value "{raw}" is not int.', "NUMBER_TYPE_COERCE") from None
    if value < low:
        raise form_error(
            key, f"Int value should be greater than or equal to {low}.", "NUMBER_TYPE_MIN"
        )
    if value > high:
        raise form_error(
            key, f"Int value should be less than or equal to {high}.", "NUMBER_TYPE_MAX"
        )
    return value
