"""The REST routes discord.py 2.7 uses for login, command sync and interaction responses, wired
onto one aiohttp application.

Each group of routes (one module each) works on the world and the parts it names, and reports
through the :class:`~testkit.discord_server.notifier.Notifier`; the recorder wraps them all.
Anything not routed here answers 404 and is recorded as ``unimplemented``.
"""

from __future__ import annotations

from aiohttp import web

from ..address import API_PREFIX, Address
from ..commands import CommandRegistry
from ..interactions import InteractionLog
from ..messages import MessageStore
from ..notifier import Notifier
from ..recording import InjectionQueue, RecordedRequest
from ..rules import SlidingWindowLimiter, ViolationKind
from ..state import State
from .base import RECORD, Route, json_response
from .channels import Channels
from .commands import CommandRoutes
from .directory import Directory
from .limits import EditLimiter
from .recorder import RequestRecorder
from .responses import InteractionResponses


class RestApi:
    """Every route, bound to the parts of one server."""

    def __init__(
        self,
        state: State,
        notifier: Notifier,
        *,
        address: Address,
        shard_count: int,
        requests: list[RecordedRequest],
        injections: InjectionQueue,
        interactions: InteractionLog,
        messages: MessageStore,
        commands: CommandRegistry,
        limiter: SlidingWindowLimiter,
    ) -> None:
        self.notifier = notifier
        edits = EditLimiter(state, limiter)
        self.recorder = RequestRecorder(state, notifier, requests, injections)
        self.directory = Directory(state, address, shard_count=shard_count)
        self.groups = [
            self.directory,
            InteractionResponses(state, notifier, interactions, messages, edits),
            Channels(state, notifier, messages, edits),
            CommandRoutes(state, commands),
        ]

    def routes(self) -> list[Route]:
        """Every API route (paths after ``/api/v10``), in the order they are matched."""
        return [route for group in self.groups for route in group.routes()]

    def install(self, app: web.Application) -> None:
        app.middlewares.append(self.recorder.middleware)
        for method, path, handler in self.routes():
            app.router.add_route(method, API_PREFIX + path, handler)
        app.router.add_get(
            "/attachments/{channel_id}/{attachment_id}/{filename}", self.directory.get_attachment
        )
        app.router.add_route("*", "/{tail:.*}", self.unimplemented)

    async def unimplemented(self, request: web.Request) -> web.Response:
        record: RecordedRequest | None = request.get(RECORD)
        self.notifier.violate(
            ViolationKind.UNIMPLEMENTED,
            f"{request.method} {request.path} is not implemented",
            request=record,
        )
        return json_response({"message": "404: Not Found", "code": 0}, 404)


__all__ = ["RestApi"]
