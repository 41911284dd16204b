"""The engine on a Ray Serve cluster: one replica per GPU, each running today's `Engine`.

`RayEngine` offers the bot the same calls as `Engine` (submit, progress, cancel, Busy,
EngineDead); the requests, progress and results cross to the replicas as the engine's own
dataclasses. The bot's process never imports Ray: `RayEngine.start()` starts a bridge child
process that does (`bridge.py`), so the `ray` extra is needed only where `[engine] backend
= "ray"`, and a lost cluster cannot take the bot down with it.
"""

from ..service import Engine
from .backend import RayEngine
from .config import RayConfig

__all__ = ["AnyEngine", "RayConfig", "RayEngine"]

#: The engine in this process, or its replicas on a Ray cluster: the bot calls both alike.
AnyEngine = Engine | RayEngine
