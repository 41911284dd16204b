"""Operations: the endpoint over a real socket (health reflects its checks, metrics are
Prometheus text), the metering and pointing of discord.py's HTTP client, and the heap as
start-up leaves it."""

from __future__ import annotations

import asyncio
import gc
import weakref

import aiohttp
import discord
import pytest
from discord.gateway import DiscordWebSocket
from discord.http import Route
from prometheus_client.parser import text_string_to_metric_families

from bot.ops.discord_http import HttpMeter, follow_gateway, point_discord_at
from bot.ops.health import HealthChecks, OpsServer
from bot.ops.heap import THRESHOLDS, settle_heap
from bot.ops.metrics import Metrics
from bot.timing.limits import DISCORD_API
from testkit.discord_server import DiscordTestServer


async def test_health_and_metrics_over_http() -> None:
    state = {"gateway": True, "engine": True, "database": True}

    async def database() -> bool:
        if not state["database"]:
            raise ConnectionRefusedError("database down")
        return True

    metrics = Metrics()
    server = OpsServer(
        metrics,
        HealthChecks(
            gateway=lambda: state["gateway"],
            engine=lambda: state["engine"],
            database=database,
            backend=lambda: {"kind": "ray", "replicas_alive": 2},
        ),
    )
    await server.start("127.0.0.1:0")
    base = f"http://127.0.0.1:{server.port}"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/healthz") as response:
                assert response.status == 200
                assert await response.json() == {
                    "ok": True,
                    "gateway": True,
                    "engine": True,
                    "database": True,
                    "backend": {"kind": "ray", "replicas_alive": 2},
                }
            state["database"] = False
            state["gateway"] = False
            async with http.get(f"{base}/healthz") as response:
                assert response.status == 503
                body = await response.json()
                assert body["ok"] is False and body["database"] is False and body["engine"] is True

            metrics.queue_depth.set(3)
            metrics.refusals.labels(reason="quota").inc(2)
            metrics.batch_size.observe(4)
            metrics.discord_errors.labels(code="429").inc()
            async with http.get(f"{base}/metrics") as response:
                assert response.status == 200
                assert response.headers["Content-Type"].startswith("text/plain")
                text = await response.text()
    finally:
        await server.stop()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("imagine_queue_depth", ())] == 3
    assert samples[("imagine_refusals_total", (("reason", "quota"),))] == 2
    assert samples[("imagine_batch_images_count", ())] == 1
    assert samples[("imagine_discord_errors_total", (("code", "429"),))] == 1


def _sample(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> float:
    value = metrics.registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


async def test_discord_http_is_pointed_and_metered_on_the_real_client() -> None:
    """discord.py's REST client, pointed at the test server by `point_discord_at`, counts a
    failed request by status; `follow_gateway` keeps re-identifies on that server's gateway;
    an interaction's first answer is timed from its arrival. The class attributes discord.py
    reads are restored afterwards."""
    saved = (Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY)
    metrics = Metrics()
    ticks = iter([10.0, 10.25])
    meter = HttpMeter(metrics, clock=lambda: next(ticks))
    client = discord.Client(intents=discord.Intents.none())
    try:
        async with DiscordTestServer() as server:
            server.create_application("imagine-bot")
            point_discord_at(server.api_base_url + "/")
            assert Route.BASE == server.api_base_url
            meter.install(client.http)
            await client.login(server.application.token)
            await follow_gateway(client.http, server.api_base_url)
            gateway = str(DiscordWebSocket.DEFAULT_GATEWAY)
            assert gateway != str(saved[1]) and gateway.startswith("ws://127.0.0.1")

            server.inject_failures("GET", r"^/channels/\d+$", [403])
            with pytest.raises(discord.HTTPException):
                await client.http.get_channel(1234)
            assert _sample(metrics, "imagine_discord_errors_total", {"code": "403"}) == 1

            meter.arrived(42)
            route = Route("POST", "/interactions/{id}/{token}/callback", id=42, token="t")
            assert await meter.meter(asyncio.sleep(0, result="ok"), route) == "ok"
            assert _sample(metrics, "imagine_first_answer_seconds_count") == 1
            assert _sample(metrics, "imagine_first_answer_seconds_sum") == 0.25
            await client.close()
    finally:
        Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY = saved
    await follow_gateway(client.http, DISCORD_API)  # Discord's own API: nothing to follow
    assert DiscordWebSocket.DEFAULT_GATEWAY == saved[1]


def test_a_settled_heap_is_frozen_and_still_collects_later_garbage() -> None:
    """What exists at the end of start-up is out of the collector's reach, collections come
    as `THRESHOLDS` say, and a cycle made afterwards is still freed. (This test process's
    collector is put back as it was.)"""

    class Node:
        me: Node | None = None

    thresholds = gc.get_threshold()
    made_before = Node()
    try:
        frozen = settle_heap()
        assert frozen == gc.get_freeze_count() > 0
        assert gc.is_tracked(made_before)
        assert all(found is not made_before for found in gc.get_objects())  # frozen
        assert gc.get_threshold() == THRESHOLDS
        later = Node()
        later.me = later
        gone = weakref.ref(later)
        del later
        gc.collect()
        assert gone() is None
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
