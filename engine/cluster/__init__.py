"""The engine on a Ray Serve cluster: one replica per GPU, each running today's `Engine`.

`RayEngine` is an `EngineClient`, like the local `Engine` (check, submit, progress, cancel,
Busy, EngineDead); the requests, progress and results cross to the replicas as the engine's own
dataclasses. The bot's process never imports Ray: `RayEngine.start()` starts a bridge child
process that does (`bridge.py`), so the `ray` extra is needed only where `[engine] backend
= "ray"`, and a lost cluster cannot take the bot down with it.
"""

from .backend import RayEngine
from .config import RayConfig

__all__ = ["RayConfig", "RayEngine"]
