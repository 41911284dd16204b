"""`ClusterLink`: the bot process's link to the Ray cluster, through the bridge process.

It keeps what the bot knows of the cluster: the bridge (`bridge.py`), the application's
description (`ReplicaInfo`), each replica's last report of its load, how many replicas run,
and whether the cluster answers. **A cluster that cannot be reached** makes the link
unreachable (`RayEngine.alive` is False, new submits raise `EngineUnavailable`); accepted
jobs wait up to `[ray] outage_s` for it to come back (`until_reachable`). So does a bridge
process that stops talking or talks garbage: it is killed at once and a new one started
(`watch`); no call here waits without a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from ..config import EngineConfig
from ..errors import EngineError, EngineUnavailable
from ..job import Job, JobState
from .bridge import CALL_DEADLINE, WATCH_INTERVAL, Bridge
from .config import RayConfig
from .wire import ReplicaInfo, ReplicaLoad

__all__ = ["PROBE_TIMEOUT", "SILENT_CHECKS", "ClusterLink"]

log = logging.getLogger(__name__)

#: The bridge's reports in a row without a replica count (Serve not answering it) before
#: the cluster counts as lost; a bridge that sends no reports at all is its own death.
SILENT_CHECKS = 5
#: Seconds a check of the cluster may take before it counts as unreachable.
PROBE_TIMEOUT = 10.0


class ClusterLink:
    """The bridge, the replicas and the cluster's reachability (see the module doc)."""

    def __init__(self, config: EngineConfig, ray: RayConfig) -> None:
        self.config = config
        self.ray_config = ray
        self.bridge: Bridge | None = None
        self.info: ReplicaInfo | None = None
        self.replicas: dict[str, ReplicaLoad] = {}  # last report of each replica seen
        self.replicas_running = 0  # as Serve last reported them
        self._reachable = asyncio.Event()
        self._lost_since: float | None = None
        self._watch_task: asyncio.Task[None] | None = None

    async def start(self) -> ReplicaInfo:
        """Start the bridge (it reaches the cluster and deploys or joins the application),
        then watch the cluster; raises `EngineError` as `Bridge.start` does."""
        bridge = Bridge(self.config, self.ray_config)
        self.info = await bridge.start()
        self.bridge = bridge
        self.seen(self.info.load)
        self.replicas_running = self.ray_config.replicas
        self._reachable.set()
        self._watch_task = asyncio.create_task(self._watch(), name="ray-cluster-watch")
        return self.info

    async def close(self) -> None:
        """Stop watching and close the bridge (the application keeps running)."""
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
        if self.bridge is not None:
            await self.bridge.close()

    def started(self) -> ReplicaInfo:
        if self.info is None:
            raise EngineError("The engine has not been started.")
        return self.info

    @property
    def reachable(self) -> bool:
        return self._reachable.is_set()

    @property
    def alive(self) -> bool:
        """Reachable through a live bridge, with a replica running."""
        return (
            self.info is not None
            and self._reachable.is_set()
            and self.bridge is not None
            and self.bridge.alive
            and self.replicas_running > 0
        )

    @property
    def replicas_alive(self) -> int:
        """Replicas Serve reports running (0 while the cluster cannot be reached)."""
        return self.replicas_running if self._reachable.is_set() else 0

    def seen(self, load: ReplicaLoad) -> None:
        self.replicas[load.replica] = load

    def check_open(self) -> None:
        """Raise `EngineUnavailable` unless the cluster answers through a live bridge."""
        self.started()
        bridge = self.bridge
        if not self._reachable.is_set() or bridge is None or not bridge.alive:
            raise EngineUnavailable("the Ray cluster cannot be reached")

    async def call(self, method: str, *args: Any, within: float = CALL_DEADLINE) -> Any:
        if self.bridge is None:
            raise EngineUnavailable("the Ray cluster cannot be reached")
        return await self.bridge.call(method, *args, within=within)

    async def until_reachable(self, job: Job) -> None:
        """Wait (shown as queued) while the cluster cannot be reached, up to `[ray] outage_s`
        since it was lost; then `EngineUnavailable`."""
        if self._reachable.is_set():
            return
        lost_since = self._lost_since or time.monotonic()
        left = self.ray_config.outage_s - (time.monotonic() - lost_since)
        job.update_progress(state=JobState.QUEUED, position=None, step=0, preview=None)
        try:
            await asyncio.wait_for(self._reachable.wait(), max(0.0, left))
        except TimeoutError:
            raise EngineUnavailable(
                f"the Ray cluster was unreachable for {self.ray_config.outage_s:.0f} s"
            ) from None

    def lost(self, why: str) -> None:
        """The cluster stopped answering: jobs wait for it (`until_reachable`)."""
        if self._reachable.is_set():
            log.error("the Ray cluster cannot be reached (%s): jobs wait for it", why)
            self._reachable.clear()
            self._lost_since = time.monotonic()

    async def probe(self) -> bool:
        """Whether Serve answers now (else the cluster, not a replica, is lost)."""
        try:
            await self.call("count", within=PROBE_TIMEOUT)
        except EngineError:
            return False
        return True

    async def _watch(self) -> None:
        """Every `WATCH_INTERVAL`: replicas alive, or the cluster lost (the bridge process
        gone, Serve not answering) and then a new bridge until it answers again."""
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            bridge = self.bridge
            if bridge is None or not bridge.alive:
                self.lost(bridge.death if bridge and bridge.death else "its bridge process ended")
                await self._reconnect()
                continue
            if bridge.unanswered >= SILENT_CHECKS:
                self.lost("Serve does not answer")
            if not self._reachable.is_set():
                # A bridge whose cluster went away may hang in Ray's calls: start afresh.
                await bridge.kill()
                continue
            alive = bridge.replicas
            if alive is None or bridge.unanswered:
                continue
            if alive != self.replicas_running:
                log.info("Ray replicas running: %d (were %d)", alive, self.replicas_running)
            self.replicas_running = alive
            with contextlib.suppress(EngineError):  # fresh "loaded" marks for /models
                self.info = await self.call("describe", within=PROBE_TIMEOUT)

    async def _reconnect(self) -> None:
        """Start a new bridge; the cluster is back once it has connected and deployed."""
        bridge = Bridge(self.config, self.ray_config)
        try:
            info = await bridge.start()
        except EngineError as exc:
            log.debug("the Ray cluster is still unreachable: %s", exc)
            return
        old, self.bridge, self.info = self.bridge, bridge, info
        if old is not None:
            await old.close()
        self._back()

    def _back(self) -> None:
        if not self._reachable.is_set():
            log.info("the Ray cluster answers again: jobs resume")
            self._lost_since = None
            self._reachable.set()
