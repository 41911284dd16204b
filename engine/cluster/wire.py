"""What crosses between the bot and a replica, besides the engine's own request and result
types: the replica's description and the events of one job's stream. Pure, picklable."""

from __future__ import annotations

from dataclasses import dataclass

from ..catalog import ModelInfo
from ..errors import EngineError
from ..job import Progress
from ..result import GenerationResult

__all__ = ["ReplicaEvent", "ReplicaInfo", "ReplicaLoad"]


@dataclass(frozen=True, slots=True)
class ReplicaLoad:
    """One replica as it reports itself: who it is and how busy its engine is."""

    replica: str  # Serve's replica id
    pid: int
    node: str
    queue_depth: int
    running: int


@dataclass(frozen=True, slots=True)
class ReplicaInfo:
    """A replica's engine: what the bot shows and validates against without loading models."""

    load: ReplicaLoad
    config_hash: str  # what it was deployed from (`replica.config_hash`): another redeploys
    scheduling: str
    models: tuple[ModelInfo, ...]


@dataclass(frozen=True, slots=True)
class ReplicaEvent:
    """One item of a job's stream: progress, or its end (a result or an engine error)."""

    load: ReplicaLoad
    progress: Progress | None = None
    result: GenerationResult | None = None
    error: EngineError | None = None
