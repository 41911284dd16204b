"""Which models are loaded, and loading or unloading them, on the schedulers' behalf.

Pure asyncio, on the event loop. A scheduler asks `ready(model)` before it runs work for a
model, and `want(model)` for work that waits on one. Loading happens on the worker's loader
thread, so the loaded models keep serving meanwhile; at most `capacity` models are loaded or
loading at once, and to make room the least recently used model that has no work running
(`in_use`) is unloaded first, preferring one no queued request waits for. A model that fails to
load is reported once through `take_failures` so its queued requests fail instead of waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

from .errors import EngineError

if TYPE_CHECKING:
    from .worker import Worker

__all__ = ["Residency"]

log = logging.getLogger(__name__)


class Residency:
    """Loaded models in least-recently-used order, and the loads in flight."""

    def __init__(
        self,
        worker: Worker,
        capacity: int,
        *,
        in_use: Callable[[], Collection[str]],
        on_change: Callable[[], None],
    ) -> None:
        self._worker = worker
        self._capacity = max(1, capacity)
        self._in_use = in_use
        self._on_change = on_change
        self._loaded: dict[str, None] = {}  # oldest use first
        self._loading: dict[str, asyncio.Task[None]] = {}
        self._failed: dict[str, EngineError] = {}
        self.loads = 0  # models loaded since start-up (switching cost, for stats)

    # What schedulers ask
    def ready(self, name: str) -> bool:
        return name in self._loaded

    @property
    def loaded(self) -> list[str]:
        """Loaded models, least recently used first."""
        return list(self._loaded)

    @property
    def loading(self) -> set[str]:
        return set(self._loading)

    def touch(self, name: str) -> None:
        """`name` is about to run: it becomes the most recently used."""
        if name in self._loaded:
            self._loaded[name] = self._loaded.pop(name)

    def want(self, name: str, needed: Collection[str] = ()) -> None:
        """Start loading `name` if there is room or an idle model to unload; `needed` are the
        models queued work waits for (unloaded last)."""
        if name in self._loaded or name in self._loading:
            return
        if len(self._loaded) + len(self._loading) >= self._capacity:
            victim = self._victim(needed)
            if victim is None:
                return  # every loaded model is busy: asked again when something changes
            del self._loaded[victim]
        else:
            victim = None
        self._loading[name] = asyncio.create_task(self._swap(name, victim), name=f"load-{name}")

    def take_failures(self) -> dict[str, EngineError]:
        """Models that failed to load since the last call, with the reason."""
        failed, self._failed = self._failed, {}
        return failed

    # Start-up and shutdown
    def mark_loaded(self, name: str) -> None:
        self._loaded[name] = None

    async def close(self) -> None:
        tasks = list(self._loading.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # Internals
    def _victim(self, needed: Collection[str]) -> str | None:
        busy = set(self._in_use())
        idle = [name for name in self._loaded if name not in busy]
        unneeded = [name for name in idle if name not in needed]
        return (unneeded or idle or [None])[0]

    async def _swap(self, name: str, victim: str | None) -> None:
        try:
            if victim is not None:
                log.info("unloading model %s to make room for %s", victim, name)
                await self._worker.unload(victim)
            log.info("loading model %s", name)
            await self._worker.load(name)
            self._loaded[name] = None
            self.loads += 1
            log.info("model %s is loaded", name)
        except EngineError as exc:
            log.error("%s", exc)
            self._failed[name] = exc
        except Exception as exc:  # a bug or a lost device: its requests must not wait forever
            log.error("loading model %s failed", name, exc_info=exc)
            self._failed[name] = EngineError(f"Could not load model {name!r}: {exc}")
        finally:
            self._loading.pop(name, None)
            self._on_change()
