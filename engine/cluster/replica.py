"""The Serve deployment: one replica runs one `Engine`, the same engine as the local backend.

Built by `deployment()` when the bot deploys, so `@serve.multiplexed` can take the configured
`max_loaded_models`: Serve then routes a request to a replica that has served its model
recently (it mirrors the engine's own least-recently-used residency), and otherwise to the
least busy one. A job is one streaming call: `ReplicaEvent`s while it waits and runs, then its
result or its engine error; the caller cancelling the call cancels the job here.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

from ..client import Checked
from ..config import EngineConfig
from ..errors import EngineError
from ..job import JobState
from ..request import ImageRequest
from ..service import Engine
from .config import RayConfig
from .wire import ReplicaEvent, ReplicaInfo, ReplicaLoad

__all__ = ["DEPLOYMENT", "config_hash", "deployment"]

#: The deployment's name inside the application.
DEPLOYMENT = "engine"


def config_hash(config: EngineConfig, ray: RayConfig) -> str:
    """A short fingerprint of what a deployment is made from (the engine config and the
    replicas' number and size): a bot with another one redeploys instead of joining."""
    sizing = (ray.replicas, ray.min_replicas, ray.max_replicas, ray.num_gpus, ray.num_cpus)
    return hashlib.sha256(repr((config, sizing)).encode()).hexdigest()[:16]


class EngineReplica:
    """One replica: an `Engine` started in the constructor (its models loaded and checked)."""

    async def __init__(self, config: EngineConfig, fingerprint: str) -> None:
        from ray import serve

        self.config = config
        self.fingerprint = fingerprint
        self.engine = Engine(config)
        await self.engine.start()
        self.replica = serve.get_replica_context().replica_tag
        self.node = socket.gethostname()

    def load(self) -> ReplicaLoad:
        engine = self.engine
        return ReplicaLoad(
            self.replica, os.getpid(), self.node, engine.queue_depth, len(engine.running)
        )

    async def describe(self) -> ReplicaInfo:
        """The engine's models and policy, for the bot's `/models` and request defaults."""
        engine = self.engine
        return ReplicaInfo(self.load(), self.fingerprint, engine.scheduling, tuple(engine.models()))

    async def check(self, request: ImageRequest) -> Checked | EngineError:
        """`Engine.check` here, where the tokenizers are; a refusal is returned, not
        raised (an expected answer, not a failure for Serve to log)."""
        try:
            return await self.engine.check(request)
        except EngineError as exc:
            return exc

    async def describe_picture(self, picture: Any, style: str = "") -> list[str] | EngineError:
        """`Engine.describe` here, where the describe model lives; a refusal is returned,
        not raised, as `check`'s."""
        try:
            return await self.engine.describe(picture, style)
        except EngineError as exc:
            return exc

    async def region_mask(self, image: Any, words: str) -> Any:
        """`Engine.region_mask` here, where the region model lives; a refusal is returned,
        not raised, as `check`'s."""
        try:
            return await self.engine.region_mask(image, words)
        except EngineError as exc:
            return exc

    async def gan_upscale(self, image: Any) -> Any:
        """`Engine.gan_upscale` here, where the upscaler lives; a refusal is returned, not
        raised, as `check`'s."""
        try:
            return await self.engine.gan_upscale(image)
        except EngineError as exc:
            return exc

    async def detect(self, image: Any, target: str) -> Any:
        """`Engine.detect` here, where the detectors live; a refusal is returned, not raised,
        as `check`'s."""
        try:
            return await self.engine.detect(image, target)
        except EngineError as exc:
            return exc

    async def generate(
        self, checked: Checked, job_id: str, preview_every: float
    ) -> AsyncIterator[ReplicaEvent]:
        """Queue the request and stream its progress, then its end (see `ReplicaEvent`).

        A preview of the latents is asked for at most every `preview_every` seconds while it
        runs (the bot cannot ask mid-stream; it shows the newest one at its next edit).
        """
        await self.note_model(checked.request.model or self.engine.default_model)
        try:
            job = self.engine.submit(checked, job_id=job_id)
        except EngineError as exc:
            yield ReplicaEvent(self.load(), error=exc)
            return
        try:
            last_preview = 0.0
            async for progress in job.updates():
                now = time.monotonic()
                if progress.state is JobState.RUNNING and now - last_preview >= preview_every:
                    job.request_preview()
                    last_preview = now
                if not job.done():
                    yield ReplicaEvent(self.load(), progress=progress)
            try:
                result = await job.result()
            except EngineError as exc:
                yield ReplicaEvent(self.load(), error=exc)
                return
            yield ReplicaEvent(self.load(), result=result)
        except (asyncio.CancelledError, GeneratorExit):
            job.cancel()  # the bot cancelled the call: free the job's place here too
            raise

    async def status(self) -> ReplicaLoad:
        return self.load()

    def check_health(self) -> None:
        """Serve replaces a replica whose engine died (its jobs run again elsewhere)."""
        if not self.engine.alive:
            raise RuntimeError("the replica's engine stopped")

    async def note_model(self, name: str) -> str:
        """Overridden by `deployment()` with Serve's multiplexing, which records `name`."""
        return name


def deployment(config: EngineConfig, ray: RayConfig) -> Any:
    """The Serve application: `EngineReplica` with the configured placement and sizing."""
    from ray import serve

    class Replica(EngineReplica):
        @serve.multiplexed(max_num_models_per_replica=max(1, config.max_loaded_models))
        async def note_model(self, name: str) -> str:
            return name

    Replica.__name__ = Replica.__qualname__ = "EngineReplica"
    options: dict[str, Any] = {
        "name": DEPLOYMENT,
        "ray_actor_options": {"num_gpus": ray.num_gpus, "num_cpus": ray.num_cpus},
        # Each replica's own queue bounds what it holds (its `Busy`); the bot keeps the rest.
        "max_ongoing_requests": config.max_queue + config.max_batch_size,
        "health_check_period_s": 5.0,
        "graceful_shutdown_timeout_s": 60.0,
        # A replica whose model cannot load fails the deployment at once, with its reason.
        "max_constructor_retry_count": 1,
        "logging_config": {"enable_access_log": False},
    }
    if ray.autoscaling:
        options["autoscaling_config"] = {
            "min_replicas": ray.min_replicas,
            "max_replicas": ray.max_replicas,
            "target_ongoing_requests": config.max_batch_size,
        }
    else:
        options["num_replicas"] = ray.replicas
    return serve.deployment(**options)(Replica).bind(config, config_hash(config, ray))
