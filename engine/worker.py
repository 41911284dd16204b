"""The engine's one worker thread and everything that lives on it: the models, one `Runner`
each and, for step scheduling, a `Stepper` each; and the describer's thread (the describe
model and the tagger).

diffusers pipelines keep state between calls (schedulers, attention processors, active LoRA
adapters), so exactly one thread ever runs them; the event loop only awaits this object's
methods, each one hop onto that thread. A model is loaded on a second thread, the loader,
while it is nobody else's, so the other models keep serving meanwhile; it is handed to the
worker thread only once loaded. Which models stay loaded is the event loop's decision
(`residency.Residency`); this object only loads and unloads when told.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch

from .config import EngineConfig
from .describe import Describer
from .errors import EngineError
from .job import Slot
from .memory import gib
from .profile import ModelProfile
from .result import GeneratedImage
from .runner import Runner
from .stepper import Sample, Stepper
from .tagger import Tagger
from .vision import Helpers

__all__ = ["Worker"]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: The picture readers' keys among the models' sizes, by prompt style (not model names).
READERS = {"prose": "<describe>", "tags": "<tagger>"}
#: Each style's reader, in `[describe]`'s words (when it is off) and in the logs' and errors'.
_OFF = {"prose": "model", "tags": "tagger"}
_WHAT = {"prose": "describe model", "tags": "tagger"}


def _no_grad() -> None:
    torch.set_grad_enabled(False)  # per thread: both of ours only ever run inference


class Worker:
    """`await Worker(config).start()` loads the default model on a new thread and returns its
    profile; `check_models()` loads each other model once to learn its profile."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self._runners = {spec.name: Runner(config, spec) for spec in config.model_specs}
        self._executor: ThreadPoolExecutor | None = None
        self._loader: ThreadPoolExecutor | None = None
        self._steppers: dict[str, Stepper] = {}
        self._sizes: dict[str, int] = {}  # bytes each model holds on its device (`size`)
        self.budget: int | None = None  # bytes all loaded models may hold (None: no bound)
        self._budget_source = ""  # what sets the budget, in words
        self.stepping = False
        # The describe model and the tagger, by prompt style; each loads on first use.
        self._readers: dict[str, Describer | Tagger] = {
            "prose": Describer(config),
            "tags": Tagger(config),
        }
        self._describe_thread: ThreadPoolExecutor | None = None
        self._describe_lock = asyncio.Lock()  # one load at a time
        self.helpers: Helpers | None = None  # the canvas's helper models, made on first use

    async def start(self) -> list[str]:
        """Start the threads and load every model once, the default one last: each model's
        profile is learnt and its LoRAs checked (`EngineError` names the one that cannot
        load), and no more than `max_loaded_models` are ever loaded at once. Returns the
        models left loaded, least recently used first."""
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="imagine-engine", initializer=_no_grad
        )
        self._loader = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="imagine-loader", initializer=_no_grad
        )
        self._describe_thread = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="imagine-describe", initializer=_no_grad
        )
        default = self.config.default_model_name
        order = [name for name in self._runners if name != default] + [default]
        loaded: list[str] = []
        try:
            await self._check_memory()
            for n, name in enumerate(order, 1):
                if len(order) > 1:
                    log.info("checking model %s (%d of %d)", name, n, len(order))
                while loaded and not self.fits(name, loaded):  # the oldest makes room first
                    await self.unload(loaded.pop(0))
                await self.load(name)
                loaded.append(name)
        except EngineError:
            self._executor.shutdown(wait=False)
            self._loader.shutdown(wait=False)
            self._describe_thread.shutdown(wait=False)
            raise
        return loaded

    async def _check_memory(self) -> None:
        """Estimate every model's size from its files (`budget.check_memory`): one that can
        never fit the memory budget stops start-up before anything loads."""
        from .budget import check_memory, memory_budget

        assert self._loader is not None
        loop = asyncio.get_running_loop()
        try:
            self.budget, self._budget_source = await loop.run_in_executor(
                self._loader, memory_budget, self.config
            )
            self._sizes = await loop.run_in_executor(self._loader, check_memory, self.config)
        except ValueError as exc:
            raise EngineError(str(exc)) from exc

    def size(self, name: str) -> int:
        """Bytes model `name` holds on its device when loaded: measured at its latest load,
        else estimated from its files (0: unknown)."""
        return self._sizes.get(name, 0)

    def fits(self, name: str, beside: Sequence[str]) -> bool:
        """Whether model `name` may be loaded beside the models `beside`: fewer than
        `max_loaded_models`, and within the memory budget."""
        if len(beside) + 1 > self.config.max_loaded_models:
            return False
        return self.budget is None or sum(map(self.size, [*beside, name])) <= self.budget

    async def close(self) -> None:
        """Let the current calls finish, drop queued ones, and end the threads."""
        for executor in (self._describe_thread, self._loader, self._executor):
            if executor is not None:
                pool = executor
                await asyncio.get_running_loop().run_in_executor(
                    None, lambda pool=pool: pool.shutdown(wait=True, cancel_futures=True)
                )

    # Models
    @property
    def model_names(self) -> list[str]:
        return list(self._runners)

    def profile(self, name: str) -> ModelProfile | None:
        """The model's profile once it has loaded (kept after it is unloaded)."""
        return self._runners[name].profile

    def is_loaded(self, name: str) -> bool:
        return self._runners[name].loaded

    def memory_bytes(self, name: str) -> int:
        runner = self._runners[name]
        return runner.model.memory_bytes() if runner.loaded else 0

    async def load(self, name: str) -> ModelProfile:
        """Load model `name` on the loader thread (its LoRAs too, and its stepper when step
        scheduling is on); raises `EngineError` with the cause in one line."""
        runner = self._runners[name]
        if self._loader is None:
            raise EngineError("The engine has not been started.")
        await self._make_room_beside_describer(name)
        loop = asyncio.get_running_loop()

        def build() -> tuple[ModelProfile, Stepper | None]:
            profile = runner.load()
            stepper = None
            if self.stepping and runner.step_reason is None:
                stepper = Stepper(runner.model, runner)
            return profile, stepper

        try:
            profile, stepper = await loop.run_in_executor(self._loader, build)
        except Exception as exc:
            raise EngineError(f"Could not load model {name!r}: {exc}") from exc
        size = self._sizes[name] = runner.model.resident_bytes()
        if self.budget is not None and size > self.budget:
            await self.unload(name)
            raise EngineError(
                f"Model {name!r} holds {gib(size)} of weights on its device, more "
                f'than {self._budget_source}: set quantize or offload = "model" in '
                f"[models.{name}]"
            )
        if stepper is not None:
            self._steppers[name] = stepper
        return profile

    async def unload(self, name: str) -> None:
        """Free model `name` on the worker thread, between calls."""
        self._steppers.pop(name, None)
        await self._call(self._runners[name].unload)

    # Describing pictures
    async def describe(self, picture: Any, style: str = "") -> list[str]:
        """Candidate prompts for `picture` in `style` ("prose": the describe model's, "tags":
        the tagger's; "": the first configured) on the describer's own thread (`describe.py`
        says why). Each model is loaded on first use and counted in the memory budget: it
        must fit beside the loaded models (else `EngineError`, and it is unloaded), and it
        leaves when a model that is loaded later would not fit beside it."""
        styles = self.config.describe.styles
        if not styles:
            raise EngineError(
                "Describing pictures is off here ([describe] model and tagger are empty)."
            )
        style = style or styles[0]
        if style not in READERS:
            raise EngineError(f"No prompt style {style!r}: prose or tags.")
        if style not in styles:
            raise EngineError(
                f"Describing pictures as {style} is off here ([describe] {_OFF[style]} is empty)."
            )
        reader = self._readers[style]
        async with self._describe_lock:
            if not reader.loaded:
                await self._load_reader(style)
        return await self._on_describer(reader.describe, picture)

    async def _load_reader(self, style: str) -> None:
        reader = self._readers[style]
        try:
            size = await self._on_describer(reader.load)
        except Exception as exc:
            await self._on_describer(reader.unload)
            what = f"the {_WHAT[style]} {reader.source!r}"
            raise EngineError(f"Could not load {what}: {exc}") from exc
        beside = sum(self.size(n) for n, runner in self._runners.items() if runner.loaded)
        beside += self.describer_bytes
        if self.budget is not None and beside + size > self.budget:
            await self._on_describer(reader.unload)
            raise EngineError(
                f"The {_WHAT[style]} {reader.source!r} holds {gib(size)}, which does not fit "
                f"beside the loaded models' {gib(beside)} within {self._budget_source}."
            )
        self._sizes[READERS[style]] = size

    async def _make_room_beside_describer(self, name: str) -> None:
        """Unload the describe model and the tagger, as far as needed, when model `name`
        would not fit beside them (the image models come first; each loads again when next
        asked)."""
        if self.budget is None:
            return
        loaded = [n for n, runner in self._runners.items() if runner.loaded and n != name]
        needed = sum(map(self.size, [*loaded, name]))
        for style, key in READERS.items():
            if key in self._sizes and needed + self.describer_bytes > self.budget:
                log.info("unloading the %s to make room for model %s", _WHAT[style], name)
                await self._on_describer(self._readers[style].unload)
                del self._sizes[key]

    @property
    def describer_bytes(self) -> int:
        """Bytes the describe model and the tagger hold on their device (0: not loaded)."""
        return sum(self._sizes.get(key, 0) for key in READERS.values())

    async def _on_describer(self, fn: Callable[..., T], *args: Any) -> T:
        if self._describe_thread is None:
            raise EngineError("The engine has not been started.")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._describe_thread, fn, *args)

    def count_tokens(self, name: str, text: str) -> int:
        """Tokens a prompt uses; runs on the calling (loop) thread with its own tokenizer."""
        return self._runners[name].count_tokens(text)

    def count_chunks(self, name: str) -> Callable[[str, str], int] | None:
        """How many 77-token windows model `name` takes for a prompt pair (loop thread), or
        None when the model reads one window or sequence (its prompts are truncated)."""
        runner = self._runners[name]
        return runner.count_chunks if runner.chunked else None

    async def with_pipeline(self, fn: Callable[[Any], T], name: str | None = None) -> T:
        """`fn(pipeline)` on the worker thread, between calls (default: the default model)."""
        runner = self._runners[name or self.config.default_model_name]
        return await self._call(lambda: fn(runner.model.pipe))

    # The canvas's helper models, between ticks
    async def segment(self, image: Any, words: str) -> Any:
        """Scores of where `image` shows `words` (`vision.Helpers.segment`)."""
        return await self._call(lambda: self._helpers().segment(image, words))

    async def gan_upscale(self, image: Any) -> Any:
        """`image` enlarged by the GAN upscaler (`vision.Helpers.upscale`)."""
        return await self._call(lambda: self._helpers().upscale(image))

    async def detect(self, image: Any, target: str = "faces") -> list[tuple[int, int, int, int]]:
        """The faces' (or hands') boxes in `image` (`vision.Helpers.detect`)."""
        return await self._call(lambda: self._helpers().detect(image, target))

    def _helpers(self) -> Helpers:
        if self.helpers is None:
            self.helpers = Helpers(self.config)
        return self.helpers

    # Batch scheduling
    async def run(self, slots: Sequence[Slot]) -> list[list[GeneratedImage]]:
        """One pipeline call over every slot's images (one model: the slots share a key)."""
        return await self._call(self._runner_of(slots[0]).run, slots)

    async def release_memory(self) -> None:
        """After an out-of-memory error, hand cached blocks back before a retry."""
        await self._call(self._runners[self.config.default_model_name].release_memory)

    # Step scheduling
    async def start_stepping(self) -> str | None:
        """Step from now on; the reason a configured model cannot step, or None (every model
        must step, or the engine batches whole calls for all of them)."""
        for name, runner in self._runners.items():
            if runner.step_reason is not None:
                return f"model {name}: {runner.step_reason}"
        for runner in self._runners.values():
            if runner.loaded:
                self._steppers[runner.spec.name] = await self._call(
                    lambda runner=runner: Stepper(runner.model, runner)
                )
        self.stepping = True
        return None

    def can_step(self, name: str) -> bool:
        return name in self._steppers

    async def admit(self, slots: Sequence[Slot]) -> list[Sample | Exception]:
        """Start denoising state for each slot; a failure stands in its place."""
        return await self._call(self._stepper_of(slots[0]).admit_all, slots)

    async def tick(self, samples: Sequence[Sample]) -> list[Exception | None]:
        """One denoising step over every sample; raises only if the shared forward fails."""
        return await self._call(self._stepper_of(samples[0].slot).tick, samples)

    async def discard(self, samples: Sequence[Sample]) -> None:
        """End the runs of samples that leave without finishing (cancelled, failed alone)."""
        if samples:
            await self._call(self._stepper_of(samples[0].slot).discard, samples)

    async def finish(self, samples: Sequence[Sample]) -> list[list[GeneratedImage] | Exception]:
        """Decode, check and encode finished samples; a failure stands in its place."""
        return await self._call(self._stepper_of(samples[0].slot).finish_all, samples)

    def _runner_of(self, slot: Slot) -> Runner:
        return self._runners[slot.request.model or self.config.default_model_name]

    def _stepper_of(self, slot: Slot) -> Stepper:
        name = slot.request.model or self.config.default_model_name
        stepper = self._steppers.get(name)
        if stepper is None:
            raise RuntimeError(f"model {name} has no stepper (not loaded, or cannot step)")
        return stepper

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise EngineError("The engine has not been started.")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
