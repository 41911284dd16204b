"""What an exception from the worker means: fatal, out of memory, and the sentence users see.

Pure Python, so the schedulers can decide between "retry by halves", "fail alone" and "the
engine is dead" without importing torch: torch's `OutOfMemoryError` is recognised by name.
"""

from __future__ import annotations

__all__ = ["NotFinite", "describe_failure", "is_fatal", "is_out_of_memory"]

_FATAL_MARKERS = ("device-side assert", "illegal memory access", "CUDA error: unspecified launch")


class NotFinite(ArithmeticError):
    """Every image of a request came out as NaN or infinity, so there is nothing to deliver
    (`torch_ops.pictures` left them out)."""

    def __init__(self, images: int) -> None:
        super().__init__(f"{images} image(s) with NaN or infinite numbers")
        self.images = images

    def __reduce__(self) -> tuple[type, tuple[int]]:
        return type(self), (self.images,)


def is_fatal(exc: BaseException) -> bool:
    """Errors after which the worker cannot go on (a poisoned CUDA context, an interpreter exit)."""
    if not isinstance(exc, Exception):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in _FATAL_MARKERS)


def is_out_of_memory(exc: BaseException) -> bool:
    """`torch.cuda.OutOfMemoryError`, or any error whose message says the device ran out."""
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


def describe_failure(exc: BaseException) -> str:
    """A sentence for users: what went wrong and what they can change; never a traceback."""
    if is_out_of_memory(exc):
        return "The GPU ran out of memory making this image. Try a smaller size or fewer images."
    if isinstance(exc, NotFinite):
        return (
            "The image's numbers overflowed (NaN), so it came out blank and was not posted. "
            "Try lower prompt weights or other settings."
        )
    return f"The image could not be generated (internal error: {type(exc).__name__})."
