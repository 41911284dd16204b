"""Engine exceptions: one base class, each carrying what a front end needs to explain it.

Front ends turn these into user messages in one place; the engine never formats
Discord text, but every message here is written to be shown to a user as is.

Each one pickles to itself (`__reduce__` gives back its own constructor arguments), so an
engine running in another process (a Ray Serve replica) can raise it to the bot as it is.
"""

from __future__ import annotations

import pickle

__all__ = [
    "Busy",
    "Cancelled",
    "EngineDead",
    "EngineError",
    "EngineUnavailable",
    "GenerationFailed",
    "InvalidRequest",
    "ShuttingDown",
]


def _portable(cause: BaseException | None) -> BaseException | None:
    """The cause if it pickles, else a plain `Exception` with its text (a CUDA error's
    internals may not pickle: the message must still reach the other process)."""
    if cause is None:
        return None
    try:
        pickle.dumps(cause)
    except Exception:
        return Exception(f"{type(cause).__name__}: {cause}")
    return cause


class EngineError(Exception):
    """Base class of every error the engine raises to its callers."""


class InvalidRequest(EngineError):
    """A request value is out of range; raised before anything is queued."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return type(self), (self.field, self.message)


class Busy(EngineError):
    """The queue is full; the caller should try again later."""

    def __init__(self, queued: int, limit: int) -> None:
        super().__init__(f"The image queue is full ({queued}/{limit} waiting). Try again shortly.")
        self.queued = queued
        self.limit = limit

    def __reduce__(self) -> tuple[type, tuple[int, int]]:
        return type(self), (self.queued, self.limit)


class Cancelled(EngineError):
    """The request was cancelled before it finished."""

    def __init__(self) -> None:
        super().__init__("The request was cancelled.")

    def __reduce__(self) -> tuple[type, tuple[()]]:
        return type(self), ()


class GenerationFailed(EngineError):
    """The request failed on its own (after splitting its batch); `original` is the cause."""

    def __init__(self, message: str, original: BaseException | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.original = original

    def __reduce__(self) -> tuple[type, tuple[str, BaseException | None]]:
        return type(self), (self.message, _portable(self.original))


class EngineDead(EngineError):
    """The engine's loop or worker died; no request will complete until it is restarted."""

    def __init__(self, reason: str = "", original: BaseException | None = None) -> None:
        detail = f": {reason}" if reason else ""
        super().__init__(f"The image engine stopped{detail}.")
        self.reason = reason
        self.original = original

    def __reduce__(self) -> tuple[type, tuple[str, BaseException | None]]:
        return type(self), (self.reason, _portable(self.original))


class EngineUnavailable(EngineError):
    """The engine cannot be reached for now (a cluster that is down or cut off); it may come
    back without a restart, so a front end refunds and asks the user to try later."""

    def __init__(self, reason: str = "") -> None:
        detail = f" ({reason})" if reason else ""
        super().__init__(f"The image engine cannot be reached right now{detail}.")
        self.reason = reason

    def __reduce__(self) -> tuple[type, tuple[str]]:
        return type(self), (self.reason,)


class ShuttingDown(EngineDead):
    """The engine is stopping on purpose; the job did not fail and may be run after a restart."""

    def __init__(self) -> None:
        super().__init__("shutting down")

    def __reduce__(self) -> tuple[type, tuple[()]]:  # type: ignore[override]
        return type(self), ()
