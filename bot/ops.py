"""The optional operations endpoint: `/healthz` and Prometheus `/metrics` over aiohttp.

Off unless `[ops] listen` is set. Health answers 200 only when the gateway is connected, the
engine is alive and the database answers, so a supervisor (systemd, Kubernetes) can restart a
bot that is up but useless. Metrics live in their own registry so tests can run several bots.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["HealthChecks", "Metrics", "OpsServer"]

log = logging.getLogger(__name__)


class Metrics:
    """Every metric the bot exports; one instance per bot, in its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.queue_depth = Gauge(
            "imagine_queue_depth", "Requests waiting in the engine", registry=r
        )
        self.running = Gauge("imagine_running_jobs", "Requests being generated", registry=r)
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
            "How late a 1 s timer fires on the bot's event loop (a blocked loop stalls Discord)",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


@dataclass(frozen=True, slots=True)
class HealthChecks:
    """Callables the endpoint asks; the bot wires them to its gateway, engine and database."""

    gateway: Callable[[], bool]
    engine: Callable[[], bool]
    database: Callable[[], Awaitable[bool]]


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
        return web.json_response({"ok": healthy, **status}, status=200 if healthy else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.refresh is not None:
            self.refresh()
        return web.Response(
            body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )
