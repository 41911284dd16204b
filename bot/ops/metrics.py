"""Operations: metrics, health, HTTP metering, and where discord.py's HTTP goes.

- `Metrics`: every metric the bot exports, in its own registry (tests run several bots).
- `MetricsUpdater`: keeps the engine's gauges and histograms current, and measures how late
  the event loop runs (a blocked loop stalls Discord's heartbeat).
- `HttpMeter`: counts Discord HTTP errors by status, and times each interaction's first
  answer from its arrival, on both of discord.py's HTTP paths (the bot's REST client and the
  webhook adapter that answers interactions).
- `point_discord_at` / `follow_gateway`: discord.py reads its API and gateway URLs from
  class attributes; pointing them elsewhere (a test server, a proxy) happens only here.
- `OpsServer`: the optional `/healthz` and Prometheus `/metrics` endpoint over aiohttp, off
  unless `[ops] listen` is set. Health answers 200 only when the gateway is connected, the
  engine is alive and the database answers, so a supervisor (systemd, Kubernetes) can restart
  a bot that is up but useless.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import discord
import yarl
from aiohttp import web
from discord.gateway import DiscordWebSocket
from discord.http import HTTPClient, Route
from discord.webhook.async_ import AsyncWebhookAdapter, async_context
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from engine import EngineClient

from ..timing.limits import DISCORD_API

__all__ = [
    "HealthChecks",
    "HttpMeter",
    "Metrics",
    "MetricsUpdater",
    "OpsServer",
    "follow_gateway",
    "point_discord_at",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Seconds between metric gauge updates.
METRICS_INTERVAL = 1.0
#: Seconds between event-loop lag probes: often enough that a stall of a few tens of
#: milliseconds (one slow callback) is seen, cheap enough to run always.
LAG_PROBE_INTERVAL = 0.05
#: Seconds an interaction's arrival time is kept waiting for its first answer.
ANSWER_MEMORY = 900.0
_CALLBACK = re.compile(r"/interactions/(\d+)/[^/]+/callback$")


class Metrics:
    """Every metric the bot exports; one instance per bot, in its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.queue_depth = Gauge(
            "imagine_queue_depth", "Requests waiting in the engine", registry=r
        )
        self.running = Gauge("imagine_running_jobs", "Requests being generated", registry=r)
        self.replicas = Gauge(
            "imagine_replicas_alive", "Engine replicas running (1: the local engine)", registry=r
        )
        self.replica_jobs = Gauge(
            "imagine_replica_jobs",
            "This bot's jobs queued or running on each Ray replica",
            ["replica"],
            registry=r,
        )
        self.replica_queue = Gauge(
            "imagine_replica_queue",
            "Requests waiting in each Ray replica's engine, as it last reported",
            ["replica"],
            registry=r,
        )
        self.images = Counter("imagine_images_generated", "Images delivered", registry=r)
        self.jobs = Counter("imagine_jobs", "Jobs by final status", ["status"], registry=r)
        self.refusals = Counter(
            "imagine_refusals", "Refused requests by reason", ["reason"], registry=r
        )
        self.discord_errors = Counter(
            "imagine_discord_errors", "Discord HTTP errors by status code", ["code"], registry=r
        )
        self.batch_size = Histogram(
            "imagine_batch_images",
            "Images per pipeline call",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32),
            registry=r,
        )
        self.step_seconds = Histogram(
            "imagine_step_seconds",
            "Seconds per denoising step of a batch",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.first_answer_seconds = Histogram(
            "imagine_first_answer_seconds",
            "Seconds from interaction to its first response",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5),
            registry=r,
        )

        self.loop_lag_seconds = Histogram(
            "imagine_event_loop_lag_seconds",
            "How late a 50 ms timer fires on the bot's event loop (a blocked loop stalls Discord)",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsUpdater:
    """Turns the engine's counters into metrics; `run()` refreshes every second."""

    def __init__(self, metrics: Metrics, engine: EngineClient) -> None:
        self.metrics = metrics
        self.engine = engine
        self._calls_seen = 0  # engine pipeline calls already turned into metrics

    def refresh(self) -> None:
        metrics, engine = self.metrics, self.engine
        metrics.queue_depth.set(engine.queue_depth)
        metrics.running.set(len(engine.running))
        backend = engine.backend()
        metrics.replicas.set(backend["replicas_alive"])
        for replica, jobs in backend.get("replica_jobs", {}).items():
            metrics.replica_jobs.labels(replica=replica).set(jobs)
        for replica, queued in backend.get("replica_queues", {}).items():
            metrics.replica_queue.labels(replica=replica).set(queued)
        stats = engine.stats  # pipeline calls, or denoising ticks in step mode
        recent = stats.recent_calls
        new = min(stats.calls - self._calls_seen, len(recent))
        for call in list(recent)[len(recent) - new :]:
            metrics.batch_size.observe(call.images)
        self._calls_seen = stats.calls

    async def run(self) -> None:
        """Refresh the gauges every `METRICS_INTERVAL` and probe the loop's lag between."""
        probe = asyncio.create_task(self.probe_loop_lag(), name="loop-lag-probe")
        try:
            while True:
                await asyncio.sleep(METRICS_INTERVAL)
                self.refresh()
        finally:
            probe.cancel()

    async def probe_loop_lag(self) -> None:
        """How late each `LAG_PROBE_INTERVAL` timer fires: the wait any ready callback (an
        interaction's first answer, a gateway heartbeat) has on the loop right now."""
        while True:
            before = time.monotonic()
            await asyncio.sleep(LAG_PROBE_INTERVAL)
            lag = time.monotonic() - before - LAG_PROBE_INTERVAL
            self.metrics.loop_lag_seconds.observe(max(0.0, lag))


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


@dataclass(frozen=True, slots=True)
class HealthChecks:
    """Callables the endpoint asks; the bot wires them to its gateway, engine and database."""

    gateway: Callable[[], bool]
    engine: Callable[[], bool]
    database: Callable[[], Awaitable[bool]]
    backend: Callable[[], dict[str, Any]] = dict  # what runs the engine (`Engine.backend`)


class OpsServer:
    """`await OpsServer(metrics, checks).start("127.0.0.1:9108")`; `await server.stop()`."""

    def __init__(
        self,
        metrics: Metrics,
        checks: HealthChecks,
        refresh: Callable[[], None] | None = None,
    ) -> None:
        self.metrics = metrics
        self.checks = checks
        self.refresh = refresh  # brings gauges up to date before each scrape
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        app = web.Application()
        app.router.add_get("/healthz", self._health)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host.strip("[]"), int(port))
        await site.start()
        sockets = site._server.sockets if site._server else []  # type: ignore[union-attr]
        self.port = sockets[0].getsockname()[1] if sockets else int(port)
        log.info("ops endpoint on http://%s:%s (/healthz, /metrics)", host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _health(self, request: web.Request) -> web.Response:
        try:
            database = await self.checks.database()
        except Exception:  # an unreachable database is an answer, not a crash
            database = False
        status = {
            "gateway": self.checks.gateway(),
            "engine": self.checks.engine(),
            "database": database,
        }
        healthy = all(status.values())
        body = {"ok": healthy, **status, "backend": self.checks.backend()}
        return web.json_response(body, status=200 if healthy else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.refresh is not None:
            self.refresh()
        return web.Response(
            body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )
