"""The ops endpoint over a real socket: health reflects its checks, metrics are Prometheus text."""

from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from bot.ops import HealthChecks, Metrics, OpsServer


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
            gateway=lambda: state["gateway"], engine=lambda: state["engine"], database=database
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
