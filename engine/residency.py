"""Which models are loaded, and loading or unloading them, on the schedulers' behalf.

Pure asyncio, on the event loop. A scheduler asks `ready(model)` before it runs work for a
model, and `want(model)` for work that waits on one. Loading happens on the worker's loader
thread, so the loaded models keep serving meanwhile; the models loaded or loading at once are
at most `capacity` and, with `fits` (`Worker.fits`), within the memory budget by their sizes
(measured at their latest load, else estimated from their files: a small model may join a
loaded one where a big one makes it leave). To make room the least recently used models that
have no work running (`in_use`) are unloaded first, preferring those no queued request waits
for. A model that fails to
load is reported once through `take_failures` so its queued requests fail instead of waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection, Sequence
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
        fits: Callable[[str, Sequence[str]], bool] | None = None,
    ) -> None:
        """`fits(model, beside)`: whether `model` may be loaded beside the models `beside`
        (default: fewer than `capacity`)."""
        self._worker = worker
        self._capacity = max(1, capacity)
        self._fits = fits or (lambda name, beside: len(beside) < self._capacity)
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
        if not self._fits(name, ()):  # start-up refuses such a model: its size changed
            self._failed[name] = EngineError(f"Model {name!r} no longer fits in memory.")
            return
        victims: list[str] = []
        while not self._fits(
            name, [n for n in [*self._loaded, *self._loading] if n not in victims]
        ):
            victim = self._victim(needed, victims)
            if victim is None:
                return  # the loaded models are busy: asked again when something changes
            victims.append(victim)
        for victim in victims:
            del self._loaded[victim]
        self._loading[name] = asyncio.create_task(self._swap(name, victims), name=f"load-{name}")

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
    def _victim(self, needed: Collection[str], chosen: Collection[str] = ()) -> str | None:
        busy = set(self._in_use())
        idle = [name for name in self._loaded if name not in busy and name not in chosen]
        unneeded = [name for name in idle if name not in needed]
        return (unneeded or idle or [None])[0]

    async def _swap(self, name: str, victims: Sequence[str]) -> None:
        try:
            for victim in victims:
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
