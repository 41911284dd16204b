"""The engine's one worker thread and everything that lives on it: the model, the `Runner`
and, for step scheduling, the `Stepper`.

diffusers pipelines keep state between calls (schedulers, attention processors), so exactly
one thread ever touches them; the event loop only awaits this object's methods, each one hop
onto that thread. This is the only `run_in_executor` into it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from .config import EngineConfig
from .errors import EngineError
from .job import Slot
from .request import ModelProfile
from .result import GeneratedImage
from .runner import Runner
from .stepper import Sample, Stepper, unsupported_reason

__all__ = ["Worker"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class Worker:
    """`await Worker(config).start()` loads the model on a new thread and returns its profile."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self._runner = Runner(config)
        self._executor: ThreadPoolExecutor | None = None
        self._stepper: Stepper | None = None

    async def start(self) -> ModelProfile:
        """Start the thread and load the model on it; raises `EngineError` if it cannot load."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imagine-engine")
        try:
            return await self._call(self._runner.load)
        except Exception as exc:
            self._executor.shutdown(wait=False)
            raise EngineError(f"Could not load model {self.config.model!r}: {exc}") from exc

    async def close(self) -> None:
        """Let the current call finish, drop queued ones, and end the thread."""
        if self._executor is not None:
            executor = self._executor
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: executor.shutdown(wait=True, cancel_futures=True)
            )

    def count_tokens(self, text: str) -> int:
        """Tokens a prompt uses; runs on the calling (loop) thread with its own tokenizer."""
        return self._runner.count_tokens(text)

    async def with_pipeline(self, fn: Callable[[Any], T]) -> T:
        """`fn(pipeline)` on the worker thread, between calls."""
        runner = self._runner
        return await self._call(lambda: fn(runner.model.pipe))

    # Batch scheduling
    async def run(self, slots: Sequence[Slot]) -> list[list[GeneratedImage]]:
        """One pipeline call over every slot's images."""
        return await self._call(self._runner.run, slots)

    async def release_memory(self) -> None:
        """After an out-of-memory error, hand cached blocks back before a retry."""
        await self._call(self._runner.release_memory)

    # Step scheduling
    async def start_stepping(self) -> str | None:
        """Build the stepper for the loaded model; the reason it cannot step, or None."""
        runner = self._runner

        def build() -> Stepper | str:
            model = runner.model
            reason = unsupported_reason(model)
            return reason if reason is not None else Stepper(model)

        built = await self._call(build)
        if isinstance(built, str):
            return built
        self._stepper = built
        return None

    async def admit(self, slots: Sequence[Slot]) -> list[Sample | Exception]:
        """Start denoising state for each slot; a failure stands in its place."""
        return await self._call(self._stepping().admit_all, slots)

    async def tick(self, samples: Sequence[Sample]) -> list[Exception | None]:
        """One denoising step over every sample; raises only if the shared forward fails."""
        return await self._call(self._stepping().tick, samples)

    async def finish(self, samples: Sequence[Sample]) -> list[list[GeneratedImage] | Exception]:
        """Decode, check and encode finished samples; a failure stands in its place."""
        return await self._call(self._stepping().finish_all, samples)

    def _stepping(self) -> Stepper:
        if self._stepper is None:
            raise RuntimeError("start_stepping() has not succeeded")
        return self._stepper

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise EngineError("The engine has not been started.")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
