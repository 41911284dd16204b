"""Read-mostly routes the client looks things up with: the gateway URL, users (and DM channels),
the application, guilds with their channels, roles and members, and stored attachments."""

from __future__ import annotations

from aiohttp import web

from ..address import Address
from ..errors import UNKNOWN_MEMBER, UNKNOWN_USER, ApiError
from ..payloads import (
    application_payload,
    bot_user_payload,
    channel_payload,
    guild_payload,
    member_payload,
    role_payload,
    user_payload,
)
from ..state import State
from .base import (
    Route,
    guild_of,
    json_object,
    json_response,
    require_auth,
    snowflake,
)


class Directory:
    """Gateway, users, application and guild look-ups, and the attachment file server."""

    def __init__(self, state: State, address: Address, *, shard_count: int) -> None:
        self.state = state
        self.address = address
        self.shard_count = shard_count

    def routes(self) -> list[Route]:
        return [
            ("GET", "/gateway", self.get_gateway),
            ("GET", "/gateway/bot", self.get_gateway_bot),
            ("GET", "/users/@me", self.get_me),
            ("POST", "/users/@me/channels", self.create_dm),
            ("GET", "/users/{user_id}", self.get_user),
            ("GET", "/oauth2/applications/@me", self.get_application),
            ("GET", "/applications/@me", self.get_application),
            ("GET", "/guilds/{guild_id}", self.get_guild),
            ("GET", "/guilds/{guild_id}/channels", self.get_guild_channels),
            ("GET", "/guilds/{guild_id}/roles", self.get_guild_roles),
            ("GET", "/guilds/{guild_id}/members/{user_id}", self.get_member),
        ]

    # -- gateway, users, application -----------------------------------------------------------

    async def get_gateway(self, request: web.Request) -> web.Response:
        return json_response({"url": self.address.gateway_url})

    async def get_gateway_bot(self, request: web.Request) -> web.Response:
        require_auth(self.state, request)
        return json_response(
            {
                "url": self.address.gateway_url,
                "shards": self.shard_count,
                "session_start_limit": {
                    "total": 1000,
                    "remaining": 999,
                    "reset_after": 14_400_000,
                    "max_concurrency": 1,
                },
            }
        )

    async def get_me(self, request: web.Request) -> web.Response:
        require_auth(self.state, request)
        return json_response(bot_user_payload(self.state.require_application().bot))

    async def get_user(self, request: web.Request) -> web.Response:
        require_auth(self.state, request)
        user = self.state.users.get(snowflake(request, "user_id"))
        if user is None:
            raise ApiError(404, UNKNOWN_USER, "Unknown User")
        return json_response(user_payload(user))

    async def create_dm(self, request: web.Request) -> web.Response:
        require_auth(self.state, request)
        body = json_object(request)
        user = self.state.users.get(int(body.get("recipient_id") or 0))
        if user is None:
            raise ApiError(404, UNKNOWN_USER, "Unknown User")
        return json_response(channel_payload(self.state.create_dm_channel(user)))

    async def get_application(self, request: web.Request) -> web.Response:
        require_auth(self.state, request)
        return json_response(application_payload(self.state.require_application()))

    # -- guilds --------------------------------------------------------------------------------

    async def get_guild(self, request: web.Request) -> web.Response:
        require_auth(self.state, request)
        return json_response(guild_payload(guild_of(self.state, request)))

    async def get_guild_channels(self, request: web.Request) -> web.Response:
        require_auth(self.state, request)
        return json_response([channel_payload(c) for c in guild_of(self.state, request).channels])

    async def get_guild_roles(self, request: web.Request) -> web.Response:
        require_auth(self.state, request)
        return json_response([role_payload(r) for r in guild_of(self.state, request).roles])

    async def get_member(self, request: web.Request) -> web.Response:
        require_auth(self.state, request)
        guild = guild_of(self.state, request)
        member = guild.members.get(snowflake(request, "user_id"))
        if member is None:
            raise ApiError(404, UNKNOWN_MEMBER, "Unknown Member")
        return json_response(member_payload(member))

    # -- files (served outside the API prefix) --------------------------------------------------

    async def get_attachment(self, request: web.Request) -> web.Response:
        attachment = self.state.attachments.get(snowflake(request, "attachment_id"))
        if attachment is None or attachment.filename != request.match_info["filename"]:
            return web.Response(status=404, text="attachment not found")
        return web.Response(
            body=attachment.data, content_type=attachment.content_type or "application/octet-stream"
        )


__all__ = ["Directory"]
