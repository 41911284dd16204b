"""`Metrics`: every metric the bot exports, in its own registry (tests run several bots), and
`MetricsUpdater`, which keeps the engine's gauges and histograms current and measures how
late the event loop runs (a blocked loop stalls Discord's heartbeat).

`health.py` serves them at `/metrics`; `discord_http.py` meters Discord's HTTP into them.
"""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from engine import EngineClient

__all__ = ["LAG_PROBE_INTERVAL", "METRICS_INTERVAL", "Metrics", "MetricsUpdater"]

#: Seconds between metric gauge updates.
METRICS_INTERVAL = 1.0
#: Seconds between event-loop lag probes: often enough that a stall of a few tens of
#: milliseconds (one slow callback) is seen, cheap enough to run always.
LAG_PROBE_INTERVAL = 0.05


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
