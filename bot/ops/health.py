"""`OpsServer`: the optional `/healthz` and Prometheus `/metrics` endpoint over aiohttp, off
unless `[ops] listen` is set. Health answers 200 only when the gateway is connected, the
engine is alive and the database answers, so a supervisor (systemd, Kubernetes) can restart
a bot that is up but useless.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .metrics import Metrics

__all__ = ["HealthChecks", "OpsServer"]

log = logging.getLogger(__name__)


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
