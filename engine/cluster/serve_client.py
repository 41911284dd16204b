"""`ServeClient`: everything that touches Ray, run in the bridge's child process.

Ray ends a driver process when the node it is attached to dies (measured here: the driver
exited within a second of its head node), so the bot never imports Ray itself: this client
runs in a child (`bridge.py`), and a lost cluster costs only that child.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

from ..client import Checked
from ..config import EngineConfig
from ..errors import EngineError, EngineUnavailable
from ..sources import first_line
from .config import RayConfig
from .replica import DEPLOYMENT, config_hash, deployment
from .wire import ReplicaInfo

__all__ = ["NEEDS_RAY", "ServeClient"]

log = logging.getLogger(__name__)

NEEDS_RAY = 'backend = "ray" needs Ray Serve: pip install "imagine-bot[ray]"'
#: Seconds a call to a replica (check, describe, status) may take.
CALL_TIMEOUT = 60.0
#: Seconds between looks at a deploying application.
DEPLOY_POLL_S = 1.0
#: Seconds start-up waits for Serve's own report once no node of the cluster can hold a
#: replica (Serve reports replicas unplaced for 30 s: `RAY_SERVE_SLOW_STARTUP_WARNING_S`).
UNPLACEABLE_WAIT_S = 45.0

#: What a job's stream reports at its end: ("ended" | "cancelled" | "lost" | "failed", text).
Emit = Callable[[str, Any], None]


class ServeClient:
    """Reach the cluster, deploy or join the application, and call its replicas."""

    def __init__(self, config: EngineConfig, ray: RayConfig) -> None:
        self.config = config
        self.ray_config = ray  # with `num_gpus` resolved once connected (`_sizing`)
        self._handle: Any = None
        self._owns_cluster = False
        self._responses: dict[str, Any] = {}
        self._errors: dict[str, tuple[type[BaseException], ...]] = {}

    async def start(self) -> ReplicaInfo:
        """Connect and deploy; `EngineError` with one line when that cannot be done: Ray
        missing, the cluster unreachable, a replica that fails to start, replicas that no
        node of the cluster can hold (within about a minute, with Serve's report), or
        replicas not running after `start_timeout_s`."""
        await asyncio.to_thread(self._connect)
        self.ray_config = await asyncio.to_thread(self._sizing)
        self._handle = await self._deploy()
        info: ReplicaInfo = await self.call("describe")
        return info

    async def _deploy(self) -> Any:
        """Join or deploy the application, then watch it until its replicas run."""
        handle, joined = await asyncio.to_thread(self._join_or_run)
        if joined:
            return handle
        timeout = self.ray_config.start_timeout_s
        started = time.monotonic()
        unplaceable_since: float | None = None
        while True:
            status, message, unplaceable = await asyncio.to_thread(self._deploying)
            if status == "RUNNING":
                return handle
            if status == "DEPLOY_FAILED":
                raise EngineError(f"the engine's replicas failed to start: {_cause(message)}")
            now = time.monotonic()
            if unplaceable is None:
                unplaceable_since = None
            else:
                unplaceable_since = unplaceable_since or now
                if message or now - unplaceable_since >= UNPLACEABLE_WAIT_S:
                    await asyncio.to_thread(self._withdraw)
                    said = f"; Serve: {_one_line(message)}" if message else ""
                    raise EngineError(
                        f"the engine's replicas can never be placed: each asks for "
                        f"{unplaceable} and no node of the Ray cluster has that (set "
                        f"[engine] device, or [ray] num_gpus and num_cpus){said}"
                    )
            if now - started >= timeout:
                raise EngineError(
                    f"the engine's replicas did not start within {timeout:.0f} s: "
                    f"{_one_line(message) or 'no message from Serve'}"
                )
            await asyncio.sleep(DEPLOY_POLL_S)

    async def call(self, method: str, *args: Any) -> Any:
        """A replica's method (Serve picks the replica), or "count": replicas running."""
        if method == "count":
            return await asyncio.wait_for(asyncio.to_thread(self._count), CALL_TIMEOUT)
        response = getattr(self._handle, method).remote(*args)
        try:
            return await asyncio.wait_for(response, CALL_TIMEOUT)
        except EngineError:
            raise
        except TimeoutError:
            raise EngineUnavailable("a replica did not answer in time") from None
        except self._errors["task"] as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, EngineError):
                raise cause from None
            raise EngineError(f"the engine failed: {first_line(exc)}") from None
        except self._errors["lost"] as exc:
            raise EngineUnavailable(f"no replica answered: {first_line(exc)}") from None

    async def run(self, job_id: str, checked: Checked, preview_every: float, emit: Emit) -> None:
        """Stream one job from a replica: `emit("event", ReplicaEvent)` for each event, then
        its end (see `Emit`)."""
        model = checked.request.model or self.config.default_model_name
        handle = self._handle.options(stream=True, multiplexed_model_id=model)
        response = handle.generate.remote(checked, job_id, preview_every)
        self._responses[job_id] = response
        try:
            async for event in response:
                emit("event", event)
            emit("ended", "")
        except self._errors["cancelled"]:
            emit("cancelled", "")
        except self._errors["task"] as exc:  # the replica's code raised: the job's failure
            emit("failed", f"the engine failed: {first_line(exc)}")
        except Exception as exc:  # the replica (or the cluster) went away
            emit("lost", first_line(exc))
        finally:
            self._responses.pop(job_id, None)

    def cancel(self, job_id: str) -> None:
        """Cancel a job's call: the replica cancels the job and frees its place."""
        response = self._responses.get(job_id)
        if response is not None:
            response.cancel()

    def shutdown(self) -> None:
        """Shut a private ("local") cluster down; a shared one keeps the application."""
        if not self._owns_cluster:
            return
        import ray
        from ray import serve

        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()

    # On worker threads: Ray's calls block.
    def _connect(self) -> None:
        try:
            import ray
            from ray import exceptions as rx
            from ray.serve import exceptions as sx
        except ImportError:
            raise EngineError(NEEDS_RAY) from None
        self._errors = {
            "cancelled": (sx.RequestCancelledError, asyncio.CancelledError),
            "lost": (
                rx.RayActorError,
                rx.ActorUnavailableError,
                sx.ReplicaUnavailableError,
                sx.DeploymentUnavailableError,
                rx.RaySystemError,
                rx.ObjectLostError,
            ),
            "task": (rx.RayTaskError,),
        }
        address = self.ray_config.address
        reachable_or_raise(address)
        options: dict[str, Any] = {"namespace": "imagine-bot", "logging_level": logging.WARNING}
        try:
            if address == "local":  # a new private cluster, never one already running here
                ray.init(address="local", include_dashboard=False, **options)
                self._owns_cluster = True
            else:
                ray.init(address=address, log_to_driver=False, **options)
        except Exception as exc:
            raise EngineError(
                f"cannot reach the Ray cluster at [ray] address = {address!r}: {first_line(exc)}"
            ) from None

    def _sizing(self) -> RayConfig:
        """`[ray]` with the GPUs per replica decided (`RayConfig.gpus_per_replica`)."""
        import ray

        gpus = float(ray.cluster_resources().get("GPU", 0.0))
        wanted = self.ray_config.gpus_per_replica(self.config.device, gpus)
        return dataclasses.replace(self.ray_config, num_gpus=wanted)

    def _join_or_run(self) -> tuple[Any, bool]:
        """Join the running application if it was deployed from this config (True), else
        deploy it without waiting for its replicas (False)."""
        from ray import serve

        app = self.ray_config.app
        serve.start(proxy_location="Disabled")
        status = serve.status().applications.get(app)
        if status is not None and status.status == "RUNNING":  # a str enum (never str())
            handle = serve.get_app_handle(app)
            info = handle.describe.remote().result(timeout_s=CALL_TIMEOUT)
            if info.config_hash == config_hash(self.config, self.ray_config):
                log.info("joining the running Ray Serve application %r", app)
                return handle, True
            log.warning("application %r runs another [engine] config: redeploying it", app)
        target = serve.RunTarget(
            deployment(self.config, self.ray_config), name=app, route_prefix=None
        )
        try:
            [handle] = serve.run_many([target], wait_for_applications_running=False)
        except Exception as exc:
            raise EngineError(f"the engine's replicas failed to start: {_cause(exc)}") from None
        return handle, False

    def _deploying(self) -> tuple[str, str, str | None]:
        """The application's status, Serve's message about its replicas (empty when it has
        none), and the resources one replica asks for when no live node of the cluster has
        them all (Ray's own rule for a request it calls infeasible), else None."""
        import ray
        from ray import serve
        from ray.serve.schema import ApplicationStatus

        status = serve.status().applications[self.ray_config.app]
        state = ApplicationStatus(status.status).value
        deployment_status = status.deployments.get(DEPLOYMENT)
        message = deployment_status.message if deployment_status is not None else ""
        if state == "DEPLOY_FAILED":
            message = status.message or message
        asks = {"CPU": self.ray_config.num_cpus, "GPU": self.ray_config.num_gpus or 0.0}
        asks = {name: amount for name, amount in asks.items() if amount > 0}
        nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
        fits = any(all(node.get(k, 0.0) >= v for k, v in asks.items()) for node in nodes)
        return state, message, None if fits else json.dumps(asks)

    def _withdraw(self) -> None:
        """Delete an application whose replicas can never be placed: its requests for
        resources would otherwise wait in the cluster for ever. Without waiting: Serve
        gives its never-started replicas their whole graceful shutdown time (60 s)."""
        from ray import serve

        with contextlib.suppress(Exception):
            serve.delete(self.ray_config.app, _blocking=False)

    def _count(self) -> int:
        from ray import serve

        status = serve.status().applications[self.ray_config.app]
        states = status.deployments[DEPLOYMENT].replica_states
        return int(states.get("RUNNING", 0))


def reachable_or_raise(address: str) -> None:
    """A quick TCP check of a `host:port` or `ray://host:port` address: Ray itself retries
    an unreachable one for minutes before it says so."""
    if address in {"local", "auto"}:
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise EngineError(f'[ray] address = {address!r} must be "local", "auto" or host:port')
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5.0).close()
    except OSError as exc:
        raise EngineError(
            f"cannot reach the Ray cluster at [ray] address = {address!r}: {exc.strerror or exc}"
        ) from None


def _one_line(message: str) -> str:
    return " ".join(message.split())[:400]


def _cause(exc: BaseException | str) -> str:
    """The replica constructor's own error line from Serve's deployment failure report."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error:" in line or "Exception:" in line:
            name, _, text = line.partition(": ")
            return text if name.rsplit(".", 1)[-1].endswith(("Error", "Exception")) else line
    return lines[-1] if lines else type(exc).__name__
