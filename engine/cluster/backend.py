"""`RayEngine`: the bot's engine when the GPUs are Ray Serve replicas.

It offers the calls the bot makes of `Engine` (check, submit, a `Job` with progress and a
result, cancel, `Busy`, `EngineDead`), and keeps what only the bot process can keep:

- **A job is one streaming call** to the deployment; the replica's engine batches it with
  other users' jobs on its GPU, and its progress, previews and end come back as
  `ReplicaEvent`s. Cancel cancels the call, and the replica frees the job's place.
- **A replica lost mid-job** (its process killed, its GPU gone, its engine dead) is not the
  job's fault: the job runs again on a live replica with the same request and seed, so the
  same images come back once (at most `MAX_ATTEMPTS` times, then it fails).
- **A cluster that cannot be reached** makes the engine "unavailable" (`alive` is False,
  new submits raise `EngineUnavailable`); accepted jobs wait up to `[ray] outage_s` for it
  to come back and then run, else fail with `EngineUnavailable` (the bot refunds them).
  So does a bridge process that stops talking or talks garbage (`bridge.py`): it is killed
  at once and a new one started; no call here waits without a deadline.

The link to the cluster (the bridge, the replicas' reports, whether it answers) is
`link.py`'s `ClusterLink`; this module keeps the jobs in flight.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..catalog import ModelCatalog, ModelInfo
from ..client import Checked
from ..config import EngineConfig
from ..errors import Busy, Cancelled, EngineDead, EngineError, ShuttingDown
from ..job import Job, JobState, Progress
from ..profile import ModelProfile
from ..request import ImageRequest
from ..result import GenerationResult
from ..stats import EngineStats
from .config import RayConfig
from .link import ClusterLink
from .wire import ReplicaEvent, ReplicaLoad

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["MAX_ATTEMPTS", "RayEngine"]

log = logging.getLogger(__name__)

#: Runs of one job on replicas that were lost under it before it fails.
MAX_ATTEMPTS = 4
#: Seconds before a job whose replica was lost runs again (times its attempts so far).
RETRY_PAUSE = 1.0
#: Seconds between previews a replica sends of a running job.
PREVIEW_EVERY = 1.5


class _Lost(Exception):
    """The call's replica went away (or the cluster did): not the job's fault."""


@dataclass(slots=True)
class _Flight:
    """A submitted job and the streaming call that runs it now."""

    job: Job
    task: asyncio.Task[None] | None = None
    streaming: bool = False  # a replica holds the job's call now
    replica: str | None = None
    attempts: int = 0


class RayEngine(ModelCatalog):
    """`Engine`'s calls over a Ray Serve deployment (see the module doc)."""

    def __init__(self, config: EngineConfig, ray: RayConfig) -> None:
        self.config = config
        self.ray_config = ray
        self.limits = config.limits
        self.stats = EngineStats()
        self.cluster = ClusterLink(config, ray)
        self._flights: dict[str, _Flight] = {}
        self._closing = False
        self._ids = itertools.count(1)

    # Lifecycle
    async def start(self) -> None:
        """Reach the cluster and deploy (or join) the engine's Serve application, through the
        bridge process; raises `EngineError` with one line when Ray is missing, the cluster
        cannot be reached, or the replicas cannot be placed or start (a model that does not
        load)."""
        info = await self.cluster.start()
        log.info(
            "engine on Ray: application %r, %s replica(s), %s scheduling",
            self.ray_config.app,
            self.cluster.replicas_running,
            info.scheduling,
        )

    async def close(self, grace_s: float = 60.0) -> None:
        """Stop accepting; queued jobs end with `ShuttingDown` (kept for a restart), running
        ones may finish for `grace_s` seconds. The application keeps running on a shared
        cluster (other bot processes use it); a private ("local") cluster is shut down."""
        self._closing = True
        for flight in list(self._flights.values()):
            if flight.job.state is JobState.QUEUED:
                self._drop(flight, ShuttingDown())
        running = [f.task for f in self._flights.values() if f.task is not None]
        if running:
            await asyncio.wait(running, timeout=grace_s)
            for flight in list(self._flights.values()):
                self._drop(flight, ShuttingDown())
        await self.cluster.close()

    async def __aenter__(self) -> RayEngine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # Introspection (what the bot reads of `Engine`)
    def profile_named(self, name: str) -> ModelProfile:
        return next(info.profile for info in self.cluster.started().models if info.name == name)

    def models(self) -> list[ModelInfo]:
        """The configured models as a replica last described them."""
        return list(self.cluster.started().models)

    @property
    def model_loads(self) -> int:
        return 0  # counted by each replica's engine

    @property
    def scheduling(self) -> str:
        return self.cluster.started().scheduling

    @property
    def alive(self) -> bool:
        """Reachable through a live bridge, with a replica running, and not closing."""
        return not self._closing and self.cluster.alive

    @property
    def queue_depth(self) -> int:
        return sum(1 for f in self._flights.values() if f.job.state is JobState.QUEUED)

    @property
    def running(self) -> tuple[Job, ...]:
        return tuple(f.job for f in self._flights.values() if f.job.state is JobState.RUNNING)

    @property
    def replicas_alive(self) -> int:
        """Replicas Serve reports running (0 while the cluster cannot be reached)."""
        return self.cluster.replicas_alive

    def backend(self) -> dict[str, Any]:
        """What runs the engine, for `/healthz` and `/metrics`: the replicas and their load."""
        replicas = self.cluster.replicas
        return {
            "kind": "ray",
            "address": self.ray_config.address,
            "replicas_alive": self.replicas_alive,
            "replica_jobs": self.replica_jobs(),
            # Each replica's own queue and running jobs, as it last reported them (all bots').
            "replica_queues": {r: load.queue_depth for r, load in replicas.items()},
            "replica_running": {r: load.running for r, load in replicas.items()},
            "reachable": self.cluster.reachable,
        }

    def replica_jobs(self) -> dict[str, int]:
        """This bot's jobs on each replica seen (queued there or running)."""
        out = dict.fromkeys(self.cluster.replicas, 0)
        for flight in self._flights.values():
            if flight.replica is not None:
                out[flight.replica] = out.get(flight.replica, 0) + 1
        return out

    async def replica_report(self) -> ReplicaLoad:
        """One replica's own report of its load (Serve picks which)."""
        return await self.cluster.call("status")

    def replica_of(self, job: Job) -> ReplicaLoad | None:
        """The replica running `job` now, as it last reported itself."""
        flight = self._flights.get(job.id)
        return self.cluster.replicas.get(flight.replica) if flight and flight.replica else None

    @property
    def capacity(self) -> int:
        """Jobs this bot keeps in flight before `Busy`: each live replica's queue and batch."""
        per_replica = self.config.max_queue + self.config.max_batch_size
        return per_replica * max(1, self.cluster.replicas_running)

    # Submitting
    async def check(self, request: ImageRequest) -> Checked:
        """Validate on a replica (where the tokenizers are) and resolve the defaults."""
        self._open()
        answer = await self.cluster.call("check", request)
        if isinstance(answer, EngineError):
            raise answer
        return answer

    async def describe(self, picture: Image, style: str = "") -> list[str]:
        """Candidate prompts for `picture` from a replica's describe model or tagger (loaded
        there on first use: a first call may time out while it downloads)."""
        self._open()
        answer = await self.cluster.call("describe_picture", picture, style)
        if isinstance(answer, EngineError):
            raise answer
        return list(answer)

    async def region_mask(self, image: Image, words: str) -> Image:
        """The region's mask from a replica's region model (loaded there on first use)."""
        self._open()
        answer = await self.cluster.call("region_mask", image, words)
        if isinstance(answer, EngineError):
            raise answer
        return answer

    async def gan_upscale(self, image: Image) -> Image:
        """`image` enlarged by a replica's GAN upscaler (loaded there on first use)."""
        self._open()
        answer = await self.cluster.call("gan_upscale", image)
        if isinstance(answer, EngineError):
            raise answer
        return answer

    async def detect_faces(self, image: Image) -> list[tuple[int, int, int, int]]:
        """The faces' boxes from a replica's detector (loaded there on first use)."""
        return await self.detect(image, "faces")

    async def detect(self, image: Image, target: str) -> list[tuple[int, int, int, int]]:
        """The boxes of `target` ("faces", "hands") from a replica's detector."""
        self._open()
        answer = await self.cluster.call("detect", image, target)
        if isinstance(answer, EngineError):
            raise answer
        return [tuple(box) for box in answer]

    def submit(self, checked: Checked, *, job_id: str | None = None) -> Job:
        """Queue at once (`Busy`, `ShuttingDown`, `EngineUnavailable` raise here); the job's
        call to a replica starts on the event loop."""
        self._open()
        if len(self._flights) >= self.capacity:
            raise Busy(len(self._flights), self.capacity)
        job_id = job_id or f"job-{next(self._ids)}"
        job = Job(job_id, checked.request, checked.warnings, self._cancel)
        flight = _Flight(job)
        self._flights[job.id] = flight
        flight.task = asyncio.create_task(self._fly(flight), name=f"ray-job-{job.id}")
        return job

    async def generate(self, request: ImageRequest) -> GenerationResult:
        """Check, submit and wait; cancels the job if the caller is cancelled."""
        return await self.submit(await self.check(request)).awaited()

    # One job
    async def _fly(self, flight: _Flight) -> None:
        job = flight.job
        try:
            while not job.done():
                await self.cluster.until_reachable(job)
                try:
                    await self._stream(flight)
                except _Lost as exc:
                    if job.done():
                        break
                    if not await self.cluster.probe():
                        self.cluster.lost(f"{exc}")
                        continue  # not the replica: the cluster; wait for it
                    flight.attempts += 1
                    if flight.attempts >= MAX_ATTEMPTS:
                        lost = EngineDead(f"its replica was lost {MAX_ATTEMPTS} times")
                        self._end(job, None, lost)
                        break
                    log.warning("job %s: its replica was lost (%s): running it again", job.id, exc)
                    job.update_progress(state=JobState.QUEUED, step=0, position=None, preview=None)
                    # Serve takes a moment to stop routing to a dead replica.
                    await asyncio.sleep(RETRY_PAUSE * flight.attempts)
        except EngineError as exc:
            self._end(job, None, exc)
        except asyncio.CancelledError:
            self._end(job, None, ShuttingDown())
            raise
        except Exception as exc:  # a bug here must not leave the job hanging
            log.error("job %s: %r", job.id, exc, exc_info=exc)
            self._end(job, None, EngineDead(f"{type(exc).__name__}: {exc}", exc))
        finally:
            self._flights.pop(job.id, None)

    async def _stream(self, flight: _Flight) -> None:
        """One call to a replica: apply its events until the job ends; `_Lost` if cut off."""
        job = flight.job
        bridge = self.cluster.bridge
        assert bridge is not None
        flight.replica = None
        events = bridge.run(job.id, Checked(job.request, job.warnings), PREVIEW_EVERY)
        flight.streaming = True
        try:
            while True:
                kind, payload = await events.get()
                if kind == "event":
                    if self._apply(flight, payload):
                        return
                    continue
                if kind == "failed":  # the replica's code raised: this job's own failure
                    self._end(job, None, EngineError(payload))
                    return
                if job.done():  # cancelled here, or ended by an event
                    return
                if kind == "lost":
                    raise _Lost(payload)
                raise _Lost(f"the replica's stream ended without a result ({kind})")
        finally:
            flight.streaming = False

    def _apply(self, flight: _Flight, event: ReplicaEvent) -> bool:
        """One event into the job; True once the job has ended."""
        job = flight.job
        self.cluster.seen(event.load)
        if flight.replica != event.load.replica:
            flight.replica = event.load.replica
            log.info(
                "job %s: on replica %s (pid %d on %s)",
                job.id,
                event.load.replica,
                event.load.pid,
                event.load.node,
            )
        if event.error is not None:
            if isinstance(event.error, EngineDead):  # the replica's engine, not the job
                raise _Lost(str(event.error))
            self._end(job, None, event.error)
            return True
        if event.result is not None:
            self._end(job, event.result, None)
            return True
        if event.progress is not None and not job.done():
            self._show(job, event.progress)
        return False

    def _show(self, job: Job, progress: Progress) -> None:
        if progress.state is JobState.RUNNING and job.started_at is None:
            job.started_at = asyncio.get_running_loop().time()
        preview = progress.preview if progress.preview is not None else job.progress.preview
        job.update_progress(
            **{f: getattr(progress, f) for f in ("state", "position", "step", "total_steps")},
            loading=progress.loading,
            preview=preview if progress.state is JobState.RUNNING else None,
        )

    def _end(self, job: Job, result: GenerationResult | None, error: BaseException | None) -> None:
        """The one place a job ends here, counted once."""
        if job.done():
            return
        if result is not None:
            self.stats.images += len(result.images)
        elif isinstance(error, Cancelled):
            self.stats.cancelled += 1
        elif not isinstance(error, ShuttingDown):
            self.stats.failed += 1
        job.resolve(result, error)

    def _cancel(self, job: Job) -> None:
        flight = self._flights.get(job.id)
        if flight is not None:
            self._drop(flight, Cancelled())

    def _drop(self, flight: _Flight, error: EngineError) -> None:
        """End a job now and cancel its call, so its replica frees its place."""
        self._end(flight.job, None, error)
        bridge = self.cluster.bridge
        if flight.streaming and bridge is not None:
            bridge.cancel(flight.job.id)
        elif flight.task is not None and not flight.task.done():
            flight.task.cancel()

    # The cluster
    def _open(self) -> None:
        if self._closing:
            raise ShuttingDown()
        self.cluster.check_open()
