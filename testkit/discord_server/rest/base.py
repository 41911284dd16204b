"""What every REST route shares: the per-request keys the recorder fills, JSON answers, the body
parser, and the look-ups a route starts with (the bot's token, snowflakes, channels, guilds)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import BodyPartReader, web

from ..errors import (
    GENERAL_ERROR,
    INVALID_FORM_BODY,
    UNKNOWN_APPLICATION,
    UNKNOWN_CHANNEL,
    UNKNOWN_GUILD,
    ApiError,
    form_error,
)
from ..interactions import Interaction
from ..recording import RecordedRequest, UploadedFile
from ..rules import ViolationKind
from ..state import DEFAULT_ATTACHMENT_SIZE_LIMIT, Channel, Guild, State

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: (method, path after ``/api/v10``, handler): what each group of routes installs.
Route = tuple[str, str, Handler]

# Per-request storage filled by the recorder for the handlers.
RECORD = web.RequestKey("record", RecordedRequest)
BODY = web.RequestKey("body", object)
FILES = web.RequestKey("files", list)
INTERACTION = web.RequestKey("interaction", Interaction)


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """JSON with ``Content-Type`` exactly ``application/json`` (discord.py compares it verbatim)."""
    return web.Response(
        body=json.dumps(data).encode(),
        status=status,
        headers={"Content-Type": "application/json", **(headers or {})},
    )


def no_content() -> web.Response:
    return web.Response(status=204)


def snowflake(request: web.Request, name: str) -> int:
    """A numeric path parameter; anything else can match no object (-1)."""
    raw = request.match_info[name]
    return int(raw) if raw.isdigit() else -1


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


def invalid_body(detail: str) -> ApiError:
    """400 Invalid Form Body for a body of the wrong shape (an ``invalid_payload`` violation)."""
    return ApiError(
        400,
        INVALID_FORM_BODY,
        "Invalid Form Body",
        violation=ViolationKind.INVALID_PAYLOAD,
        detail=detail,
    )


def json_object(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body (400 Invalid Form Body for anything else)."""
    body = request[BODY]
    if not isinstance(body, dict):
        raise invalid_body("expected a JSON object body")
    return body


def query_int(query: Any, key: str, default: int, low: int, high: int) -> int:
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


def require_auth(state: State, request: web.Request) -> None:
    """401 unless the request carries the bot's token."""
    app = state.application
    if app is None or request.headers.get("Authorization") != f"Bot {app.token}":
        raise ApiError(401, GENERAL_ERROR, "401: Unauthorized")


def require_app(state: State, request: web.Request) -> None:
    """The bot's token, and ``{app_id}`` in the path naming its application."""
    require_auth(state, request)
    app = state.require_application()
    if request.match_info["app_id"] != str(app.id):
        raise ApiError(404, UNKNOWN_APPLICATION, "Unknown Application")


def channel_of(state: State, request: web.Request) -> Channel:
    """The channel ``{channel_id}`` names (404 Unknown Channel)."""
    try:
        return state.channels[snowflake(request, "channel_id")]
    except KeyError:
        raise ApiError(404, UNKNOWN_CHANNEL, "Unknown Channel") from None


def guild_of(state: State, request: web.Request) -> Guild:
    """The guild ``{guild_id}`` names (404 Unknown Guild)."""
    guild = state.guilds.get(snowflake(request, "guild_id"))
    if guild is None:
        raise ApiError(404, UNKNOWN_GUILD, "Unknown Guild")
    return guild


def size_limit(channel: Channel) -> int:
    """The largest file a message in ``channel`` may carry (its guild's limit)."""
    return channel.guild.attachment_size_limit if channel.guild else DEFAULT_ATTACHMENT_SIZE_LIMIT


__all__ = [
    "BODY",
    "FILES",
    "INTERACTION",
    "RECORD",
    "Handler",
    "Route",
    "channel_of",
    "guild_of",
    "invalid_body",
    "json_object",
    "json_response",
    "no_content",
    "parse_body",
    "query_int",
    "require_app",
    "require_auth",
    "size_limit",
    "snowflake",
]
