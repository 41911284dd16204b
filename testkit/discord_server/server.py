"""``DiscordTestServer``: the object tests hold. Set up the world, drive users, assert outcomes.

This module only wires: the world (:mod:`.state`), the gateway and the REST routes, which
depend on the world and report through the :class:`~.notifier.Notifier` this server implements.
The test API comes in four parts, one module each: :class:`~.world_setup.WorldSetup`,
:class:`~.actions.UserActions`, :class:`~.faults.Faults` and :class:`~.checks.Checks`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from .actions import UserActions
from .address import Address
from .checks import Checks
from .clock import ServerClock
from .commands import CommandRegistry
from .faults import Faults
from .gateway import Gateway
from .interactions import InteractionLog
from .invocation import InteractionPayloads
from .messages import MessageStore
from .recording import InjectionQueue, RecordedRequest
from .rest import RestApi
from .rules import Rules, SlidingWindowLimiter, Violation
from .state import Message, State
from .waiting import Changes
from .world_setup import WorldSetup


class DiscordTestServer(WorldSetup, UserActions, Faults, Checks):
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
        self.changes = Changes()
        self.clock = ServerClock()
        self.address = Address(host, port)
        self.state = State(self.clock, rules or Rules())
        self.commands = CommandRegistry(self.state)
        self.message_store = MessageStore(self.state, self.address.attachment_url)
        self.gateway = Gateway(
            self.state,
            self,
            self.address,
            shard_count=shard_count,
            heartbeat_interval_ms=heartbeat_interval_ms,
        )
        self.state.listener = self.gateway.world_changed
        self.limiter = SlidingWindowLimiter()
        self.default_timeout = default_timeout
        self.requests: list[RecordedRequest] = []
        """Every REST request, in arrival order."""
        self.violations: list[Violation] = []
        """Rules broken and unimplemented routes hit (see :meth:`assert_clean`)."""
        self.injection_queue = InjectionQueue()
        self.interaction_log = InteractionLog(self.state, self)
        self.interaction_payloads = InteractionPayloads(self.state, self.commands, self.address)
        self.watched: dict[asyncio.Task[Any], str] = {}
        self.rest = RestApi(
            self.state,
            self,
            address=self.address,
            shard_count=shard_count,
            requests=self.requests,
            injections=self.injection_queue,
            interactions=self.interaction_log,
            messages=self.message_store,
            commands=self.commands,
            limiter=self.limiter,
        )
        self._runner: web.AppRunner | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> DiscordTestServer:
        """Bind a free port on ``host`` and start serving."""
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_get("/gateway", self.gateway.handle)
        self.rest.install(app)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.address.host, self.address.port)
        await site.start()
        self.address.port = self._runner.addresses[0][1]
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
        return self.address.port

    @property
    def base_url(self) -> str:
        return self.address.base_url

    @property
    def api_base_url(self) -> str:
        """Value for ``discord.http.Route.BASE``."""
        return self.address.api_base_url

    @property
    def gateway_url(self) -> str:
        return self.address.gateway_url

    @property
    def rules(self) -> Rules:
        """The enforced rules; mutate fields or assign a new :class:`Rules`."""
        return self.state.rules

    @rules.setter
    def rules(self, value: Rules) -> None:
        self.state.rules = value

    # -- what the handlers report (the Notifier; `notify` and `violate` are in Checks) ---------

    def message_event(self, event: str, message: Message) -> None:
        """Send MESSAGE_CREATE/UPDATE/DELETE for a non-ephemeral message, honouring intents."""
        self.gateway.message_event(event, message)


__all__ = ["DiscordTestServer"]
