"""The engine on a Ray Serve cluster: one replica per GPU, each running today's `Engine`.

`RayEngine` offers the bot the same calls as `Engine` (submit, progress, cancel, Busy,
EngineDead); the requests, progress and results cross to the replicas as the engine's own
dataclasses. Importing this package does not import Ray: `RayEngine.start()` does, so the
`ray` extra is needed only where `[engine] backend = "ray"`.
"""

from ..service import Engine
from .backend import RayEngine
from .config import RayConfig

__all__ = ["AnyEngine", "RayConfig", "RayEngine"]

#: The engine in this process, or its replicas on a Ray cluster: the bot calls both alike.
AnyEngine = Engine | RayEngine
