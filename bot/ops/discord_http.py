"""discord.py's HTTP: where it goes, and what it costs.

- `point_discord_at` / `follow_gateway`: discord.py reads its API and gateway URLs from
  class attributes; pointing them elsewhere (a test server, a proxy) happens only here.
- `HttpMeter`: counts Discord HTTP errors by status, and times each interaction's first
  answer from its arrival, on both of discord.py's HTTP paths (the bot's REST client and the
  webhook adapter that answers interactions).
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import discord
import yarl
from discord.gateway import DiscordWebSocket
from discord.http import HTTPClient, Route
from discord.webhook.async_ import AsyncWebhookAdapter, async_context

from ..timing.limits import DISCORD_API
from .metrics import Metrics

__all__ = ["ANSWER_MEMORY", "HttpMeter", "follow_gateway", "point_discord_at"]

T = TypeVar("T")

#: Seconds an interaction's arrival time is kept waiting for its first answer.
ANSWER_MEMORY = 900.0
_CALLBACK = re.compile(r"/interactions/(\d+)/[^/]+/callback$")


class HttpMeter:
    """Meters discord.py's two HTTP entry points for `Metrics` (see the module doc)."""

    def __init__(self, metrics: Metrics, clock: Callable[[], float] = time.monotonic) -> None:
        self.metrics = metrics
        self._clock = clock
        self._received: dict[int, float] = {}  # interaction id → when it arrived

    def install(self, http: HTTPClient) -> None:
        """Wrap `http.request`, and give the tasks started from here a metered webhook
        adapter (discord.py keeps it in a context variable)."""
        request = http.request

        async def metered(route: Route, **kwargs: Any) -> Any:
            return await self.meter(request(route, **kwargs), route)

        http.request = metered  # type: ignore[method-assign]
        async_context.set(_MeteredAdapter(self))

    def arrived(self, interaction_id: int) -> None:
        """An interaction came in: its first answer is timed from now."""
        now = self._clock()
        self._received.setdefault(interaction_id, now)
        if len(self._received) > 1000:  # interactions never answered through REST
            cutoff = now - ANSWER_MEMORY
            self._received = {k: v for k, v in self._received.items() if v >= cutoff}

    async def meter(self, call: Awaitable[T], route: Route) -> T:
        try:
            return await call
        except discord.HTTPException as exc:
            self.metrics.discord_errors.labels(code=str(exc.status)).inc()
            raise
        finally:
            found = _CALLBACK.search(route.url)
            if found:
                start = self._received.pop(int(found.group(1)), None)
                if start is not None:
                    self.metrics.first_answer_seconds.observe(self._clock() - start)


class _MeteredAdapter(AsyncWebhookAdapter):
    """discord.py's adapter for interaction responses and followups, metered."""

    def __init__(self, meter: HttpMeter) -> None:
        super().__init__()
        self._meter = meter

    async def request(self, route: Route, *args: Any, **kwargs: Any) -> Any:
        return await self._meter.meter(super().request(route, *args, **kwargs), route)


def point_discord_at(api_base_url: str) -> None:
    """Send discord.py's REST calls to `api_base_url` (Discord's own by default)."""
    Route.BASE = api_base_url.rstrip("/")


async def follow_gateway(http: HTTPClient, api_base_url: str) -> None:
    """After login: away from Discord's API, keep re-identifies on the gateway this API hands
    out (discord.py falls back to its built-in `DEFAULT_GATEWAY`, which is Discord's)."""
    if api_base_url.rstrip("/") == DISCORD_API:
        return
    _shards, url, _limits = await http.get_bot_gateway()
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(url)
