"""Engine exceptions: one base class, each carrying what a front end needs to explain it.

Front ends turn these into user messages in one place; the engine never formats
Discord text, but every message here is written to be shown to a user as is.
"""

from __future__ import annotations

__all__ = [
    "Busy",
    "Cancelled",
    "EngineDead",
    "EngineError",
    "GenerationFailed",
    "InvalidRequest",
    "ShuttingDown",
]


class EngineError(Exception):
    """Base class of every error the engine raises to its callers."""


class InvalidRequest(EngineError):
    """A request value is out of range; raised before anything is queued."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class Busy(EngineError):
    """The queue is full; the caller should try again later."""

    def __init__(self, queued: int, limit: int) -> None:
        super().__init__(f"The image queue is full ({queued}/{limit} waiting). Try again shortly.")
        self.queued = queued
        self.limit = limit


class Cancelled(EngineError):
    """The request was cancelled before it finished."""

    def __init__(self) -> None:
        super().__init__("The request was cancelled.")


class GenerationFailed(EngineError):
    """The request failed on its own (after splitting its batch); `original` is the cause."""

    def __init__(self, message: str, original: BaseException | None = None) -> None:
        super().__init__(message)
        self.original = original


class EngineDead(EngineError):
    """The engine's loop or worker died; no request will complete until it is restarted."""

    def __init__(self, reason: str = "", original: BaseException | None = None) -> None:
        detail = f": {reason}" if reason else ""
        super().__init__(f"The image engine stopped{detail}.")
        self.reason = reason
        self.original = original


class ShuttingDown(EngineDead):
    """The engine is stopping on purpose; the job did not fail and may be run after a restart."""

    def __init__(self) -> None:
        super().__init__("shutting down")
