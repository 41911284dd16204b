"""Retry by halves: when a shared call fails, each half is retried until the bad request fails
alone, so one request that cannot run never takes its companions down with it.

Both policies use it: the batch policy for a whole pipeline call, the step policy for one
denoising tick. A fatal error (see `failures.is_fatal`) is not retried: it propagates at once,
with every request still in the running set, so the engine can fail them all as dead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from ..failures import is_fatal

__all__ = ["split_on_failure"]

log = logging.getLogger(__name__)
T = TypeVar("T")


async def split_on_failure(
    items: Sequence[T],
    attempt: Callable[[Sequence[T]], Awaitable[None]],
    *,
    recover: Callable[[Sequence[T], Exception], Awaitable[None]],
    fail_alone: Callable[[T, Exception], None],
    on_split: Callable[[], None],
    what: str = "batch",
) -> None:
    """Run `attempt(items)`; on a non-fatal error retry each half, down to single items.

    `recover(items, exc)` runs after every non-fatal failure, before any retry (free memory,
    lower a size limit); `on_split()` counts each split; `fail_alone(item, exc)` ends an item
    that failed by itself; `what` names the call in the log ("batch of 4 failed").
    """
    try:
        await attempt(items)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        if is_fatal(exc):
            raise
        log.warning("%s of %d failed: %r", what, len(items), exc)
        await recover(items, exc)
        if len(items) == 1:
            fail_alone(items[0], exc)
            return
        on_split()
        half = len(items) // 2
        for part in (items[:half], items[half:]):
            await split_on_failure(
                part,
                attempt,
                recover=recover,
                fail_alone=fail_alone,
                on_split=on_split,
                what=what,
            )
