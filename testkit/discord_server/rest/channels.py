"""Channel routes: the channel itself, its history as Discord pages it, and the bot's own
messages in it (post, read, edit under the rate limit, delete, typing)."""

from __future__ import annotations

from aiohttp import web

from ..errors import CANNOT_EDIT_OTHERS, MISSING_PERMISSIONS, UNKNOWN_MESSAGE, ApiError, form_error
from ..flags import MANAGE_MESSAGES
from ..messages import MessageStore
from ..notifier import Notifier
from ..payloads import channel_payload, message_payload
from ..rules import ViolationKind
from ..state import Channel, Message, State
from .base import (
    FILES,
    Route,
    channel_of,
    json_object,
    json_response,
    no_content,
    query_int,
    require_auth,
    size_limit,
    snowflake,
)
from .limits import EditLimiter


class Channels:
    """``/channels/{channel_id}`` and its messages."""

    def __init__(
        self, state: State, notifier: Notifier, messages: MessageStore, edits: EditLimiter
    ) -> None:
        self.state = state
        self.notifier = notifier
        self.messages = messages
        self.edits = edits

    def routes(self) -> list[Route]:
        one = "/channels/{channel_id}/messages/{message_id}"
        return [
            ("GET", "/channels/{channel_id}", self.get_channel),
            ("GET", "/channels/{channel_id}/messages", self.list_messages),
            ("POST", "/channels/{channel_id}/messages", self.create_message),
            ("GET", one, self.get_message),
            ("PATCH", one, self.edit_message),
            ("DELETE", one, self.delete_message),
            ("POST", "/channels/{channel_id}/typing", self.typing),
        ]

    def channel_message(self, request: web.Request, channel: Channel) -> Message:
        """The message ``{message_id}`` names in ``channel`` (ephemeral ones are not there)."""
        message = self.state.messages.get(snowflake(request, "message_id"))
        if (
            message is None
            or message.deleted
            or message.ephemeral
            or message.channel is not channel
        ):
            raise ApiError(404, UNKNOWN_MESSAGE, "Unknown Message")
        return message

    async def get_channel(self, request: web.Request) -> web.Response:
        require_auth(self.state, request)
        return json_response(channel_payload(channel_of(self.state, request)))

    async def list_messages(self, request: web.Request) -> web.Response:
        """A channel's history as Discord pages it: `limit` from 1 to 100 (50 by default), and
        at most one of `before`, `after` and `around`; the `limit` messages nearest that
        point (the newest without one), always newest first. A client pages on from the
        last id it got."""
        require_auth(self.state, request)
        channel = channel_of(self.state, request)
        q = request.query
        limit = query_int(q, "limit", 50, 1, 100)
        anchors = [key for key in ("before", "after", "around") if key in q]
        if len(anchors) > 1:
            raise form_error(anchors[1], "before, after and around are mutually exclusive")
        point = query_int(q, anchors[0], 0, 0, 2**64 - 1) if anchors else None
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
        require_auth(self.state, request)
        channel = channel_of(self.state, request)
        if not channel.bot_can_send:
            raise ApiError(
                403,
                MISSING_PERMISSIONS,
                "Missing Permissions",
                violation=ViolationKind.MISSING_PERMISSIONS,
                detail=f"the bot may not send in {channel.name!r}",
            )
        app = self.state.require_application()
        message = self.messages.create(
            channel,
            app.bot,
            json_object(request),
            request[FILES],
            size_limit=size_limit(channel),
        )
        self.notifier.message_event("MESSAGE_CREATE", message)
        return json_response(message_payload(message))

    async def get_message(self, request: web.Request) -> web.Response:
        require_auth(self.state, request)
        channel = channel_of(self.state, request)
        return json_response(message_payload(self.channel_message(request, channel)))

    async def edit_message(self, request: web.Request) -> web.Response:
        require_auth(self.state, request)
        channel = channel_of(self.state, request)
        message = self.channel_message(request, channel)
        app = self.state.require_application()
        if message.author.id != app.bot.id:
            raise ApiError(
                403,
                CANNOT_EDIT_OTHERS,
                "Cannot edit a message authored by another user",
                violation=ViolationKind.MISSING_PERMISSIONS,
            )
        headers = self.edits.check(request, channel)
        self.messages.edit(
            message, json_object(request), request[FILES], size_limit=size_limit(channel)
        )
        self.notifier.message_event("MESSAGE_UPDATE", message)
        return json_response(message_payload(message), headers=headers)

    async def delete_message(self, request: web.Request) -> web.Response:
        require_auth(self.state, request)
        channel = channel_of(self.state, request)
        message = self.channel_message(request, channel)
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
        self.messages.delete(message)
        self.notifier.message_event("MESSAGE_DELETE", message)
        return no_content()

    async def typing(self, request: web.Request) -> web.Response:
        require_auth(self.state, request)
        channel_of(self.state, request)
        return no_content()


__all__ = ["Channels"]
