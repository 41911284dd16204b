"""Scheduling policies behind one `Scheduler` interface, chosen by `EngineConfig.scheduling`.

`batch` (`BatchScheduler`) runs compatible requests as one whole pipeline call; `step`
(`StepScheduler`) lets requests join and leave between denoising steps. Both share the fair
queue (`engine.queue`), the job bookkeeping (`Lifecycle`) and the retry by halves (`retry`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..config import EngineConfig
from .base import QueueingScheduler, Scheduler
from .batch import Batcher, BatchScheduler, plan_batches
from .lifecycle import Lifecycle
from .retry import split_on_failure
from .step import StepQueue, StepScheduler

if TYPE_CHECKING:
    from ..worker import Worker

__all__ = [
    "BatchScheduler",
    "Batcher",
    "Lifecycle",
    "QueueingScheduler",
    "Scheduler",
    "StepQueue",
    "StepScheduler",
    "make_scheduler",
    "plan_batches",
    "split_on_failure",
]

log = logging.getLogger(__name__)


async def make_scheduler(config: EngineConfig, worker: Worker, lifecycle: Lifecycle) -> Scheduler:
    """The configured policy; "step" falls back to "batch" when the model family cannot step."""
    if config.scheduling == "step":
        reason = await worker.start_stepping()
        if reason is None:
            return StepScheduler(config, worker, lifecycle)
        log.info("step-level scheduling unavailable (%s); batching whole calls", reason)
    return BatchScheduler(config, worker, lifecycle)
