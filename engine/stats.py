"""Counters for dashboards, tests and benchmarks, and a bounded record of recent UNet calls.

One record type serves both scheduling policies; its `kind` says which sort of call it was, so
`batches` (whole pipeline calls) and `ticks` (denoising steps over a group) never mix.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["RECENT_CALLS", "CallRecord", "EngineStats"]

#: How many recent calls `EngineStats.recent_calls` keeps: a bot runs for months, and in step
#: scheduling there is one call per denoising tick.
RECENT_CALLS = 1024


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One call into the model: a whole pipeline call ("batch") or one denoising tick ("tick")."""

    kind: Literal["batch", "tick"]
    size: tuple[int, int]  # (width, height) of every image in the call
    images: int
    requests: int
    seconds: float


@dataclass(slots=True)
class EngineStats:
    """Totals since start, plus the most recent `RECENT_CALLS` calls; updated on the loop thread.

    `batches` counts whole pipeline calls (batch scheduling) and `ticks` denoising ticks (step
    scheduling); `calls` is both, and `call_images` the images over all of them.
    """

    images: int = 0  # images delivered
    batches: int = 0
    ticks: int = 0
    call_images: int = 0
    failed: int = 0
    not_finite: int = 0  # images left out: NaN or infinity in their latents or pixels
    cancelled: int = 0
    splits: int = 0  # failed calls retried as two halves
    recent_calls: deque[CallRecord] = field(default_factory=lambda: deque(maxlen=RECENT_CALLS))

    @property
    def calls(self) -> int:
        """Calls into the model of either kind."""
        return self.batches + self.ticks

    @property
    def batch_sizes(self) -> list[int]:
        """Images per recent pipeline call, oldest first (empty under step scheduling)."""
        return [c.images for c in self.recent_calls if c.kind == "batch"]

    def record(self, call: CallRecord) -> None:
        """Count one call into the model."""
        if call.kind == "batch":
            self.batches += 1
        else:
            self.ticks += 1
        self.call_images += call.images
        self.recent_calls.append(call)
