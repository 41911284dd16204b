"""Application command routes: the same six routes for the global set and for one guild's set
(``/applications/{app_id}[/guilds/{guild_id}]/commands``), stored in the command registry."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..commands import CommandRegistry
from ..errors import UNKNOWN_APPLICATION_COMMAND, UNKNOWN_GUILD, ApiError
from ..state import State
from .base import (
    BODY,
    Route,
    invalid_body,
    json_object,
    json_response,
    no_content,
    require_app,
    snowflake,
)


class CommandRoutes:
    """Sync (bulk overwrite), list, get, upsert, edit and delete commands."""

    def __init__(self, state: State, commands: CommandRegistry) -> None:
        self.state = state
        self.commands = commands

    def routes(self) -> list[Route]:
        found: list[Route] = []
        for prefix in ("/applications/{app_id}", "/applications/{app_id}/guilds/{guild_id}"):
            found += [
                ("GET", prefix + "/commands", self.list_commands),
                ("PUT", prefix + "/commands", self.put_commands),
                ("POST", prefix + "/commands", self.upsert_command),
                ("GET", prefix + "/commands/{command_id}", self.get_command),
                ("PATCH", prefix + "/commands/{command_id}", self.edit_command),
                ("DELETE", prefix + "/commands/{command_id}", self.delete_command),
            ]
        return found

    def guild_id(self, request: web.Request) -> int | None:
        """The guild of a guild route (404 Unknown Guild), None for the global set."""
        if "guild_id" not in request.match_info:
            return None
        guild_id = snowflake(request, "guild_id")
        if guild_id not in self.state.guilds:
            raise ApiError(404, UNKNOWN_GUILD, "Unknown Guild")
        return guild_id

    def find(self, request: web.Request) -> tuple[int | None, dict[str, Any]]:
        """The stored command ``{command_id}`` names, with its guild."""
        guild_id = self.guild_id(request)
        for command in self.commands.list(guild_id):
            if command["id"] == request.match_info["command_id"]:
                return guild_id, command
        raise ApiError(404, UNKNOWN_APPLICATION_COMMAND, "Unknown application command")

    async def list_commands(self, request: web.Request) -> web.Response:
        require_app(self.state, request)
        return json_response(self.commands.list(self.guild_id(request)))

    async def put_commands(self, request: web.Request) -> web.Response:
        require_app(self.state, request)
        body = request[BODY]
        if not isinstance(body, list):
            raise invalid_body("bulk overwrite expects a JSON array")
        stored = self.commands.bulk_overwrite(
            body, guild_id=self.guild_id(request), validate=self.state.rules.validate_payloads
        )
        return json_response(stored)

    async def get_command(self, request: web.Request) -> web.Response:
        require_app(self.state, request)
        return json_response(self.find(request)[1])

    async def upsert_command(self, request: web.Request) -> web.Response:
        require_app(self.state, request)
        body = json_object(request)
        guild_id = self.guild_id(request)
        current = [c for c in self.commands.list(guild_id) if c["name"] != body.get("name")]
        existed = len(current) != len(self.commands.list(guild_id))
        stored = self.commands.bulk_overwrite(
            [*current, body], guild_id=guild_id, validate=self.state.rules.validate_payloads
        )
        command = next(c for c in stored if c["name"] == body.get("name"))
        return json_response(command, 200 if existed else 201)

    async def edit_command(self, request: web.Request) -> web.Response:
        require_app(self.state, request)
        _, command = self.find(request)
        command.update(json_object(request))
        return json_response(command)

    async def delete_command(self, request: web.Request) -> web.Response:
        require_app(self.state, request)
        guild_id, command = self.find(request)
        remaining = [c for c in self.commands.list(guild_id) if c is not command]
        self.commands.bulk_overwrite(remaining, guild_id=guild_id, validate=False)
        return no_content()


__all__ = ["CommandRoutes"]
