"""Loads the model and runs a batch of requests as one pipeline call.

Everything here executes on the engine's single worker thread (`worker.Worker` owns it). The
batch scheduler hands it a list of `Slot`s that share a `BatchKey`; it returns their images or
raises, and the scheduler decides whether to split and retry.
"""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .acceleration import accelerate, warm_up
from .config import EngineConfig
from .job import Slot
from .loader import LoadedModel, image_to_image, load_model
from .request import ModelProfile
from .result import GeneratedImage
from .torch_ops import check_safety, package_images, preview_png, seeded_generators

__all__ = ["Runner"]

log = logging.getLogger(__name__)


class Runner:
    """Loads the model once and runs batches; not thread-safe by design (one owner thread)."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self._model: LoadedModel | None = None
        self._step_callback_ok = False
        self._counter: Any = None  # the loop thread's own tokenizer, see `count_tokens`

    @property
    def model(self) -> LoadedModel:
        if self._model is None:
            raise RuntimeError("the model is not loaded")
        return self._model

    def load(self) -> ModelProfile:
        torch.set_grad_enabled(False)
        self._model = load_model(self.config)
        log.info("%s", accelerate(self._model, self.config))
        warm_up(self._model)
        params = inspect.signature(self._model.pipe.__call__).parameters
        self._step_callback_ok = "callback_on_step_end" in params
        tokenizer = getattr(self._model.pipe, "tokenizer", None)
        self._counter = copy.deepcopy(tokenizer) if tokenizer is not None else None
        return self._model.profile

    def count_tokens(self, text: str) -> int:
        """Tokens the prompt uses without BOS/EOS; safe to call from the loop thread.

        It uses a copy of the pipeline's tokenizer: a fast tokenizer keeps its padding and
        truncation settings on a shared backend, so `tokenize` here would switch padding off in
        the middle of the worker's `encode_prompt` and give it a 77-token prompt unpadded.
        """
        if self._counter is None:
            return 0
        return len(self._counter.tokenize(text))

    def run(self, slots: Sequence[Slot]) -> list[list[GeneratedImage]]:
        """One pipeline call for every image of every slot; images come back per slot."""
        model = self.model
        key = slots[0].request.key
        if any(s.request.key != key for s in slots):
            raise ValueError("a batch mixes sizes, steps or guidance")
        prompts: list[str] = []
        negatives: list[str] = []
        generators: list[torch.Generator] = []
        inits: list[Any] = []
        for slot in slots:
            prompts += [slot.request.prompt] * slot.request.count
            negatives += [slot.request.negative_prompt] * slot.request.count
            generators += seeded_generators(slot.request)
            inits += [slot.request.init_image] * slot.request.count

        kwargs: dict[str, Any] = {
            "prompt": prompts,
            "negative_prompt": self._negatives(negatives),
            "num_inference_steps": key.steps,
            "guidance_scale": key.guidance,
            "generator": generators,
            "output_type": "pil",
        }
        pipe = model.pipe
        if key.strength is None:
            kwargs |= {"width": key.width, "height": key.height}
        else:  # the size is the init images' (validate made them the request's size)
            pipe = image_to_image(model)
            kwargs |= {"image": inits, "strength": key.strength}
        if self._step_callback_ok:
            total = slots[0].request.denoising_steps
            kwargs["callback_on_step_end"] = self._step_callback(slots, total)
        with torch.inference_mode():
            images = pipe(**kwargs).images
        flags = check_safety(model, images)

        out: list[list[GeneratedImage]] = []
        i = 0
        for slot in slots:
            n = slot.request.count
            out.append(package_images(model, slot.request, images[i : i + n], flags[i : i + n]))
            i += n
        return out

    def release_memory(self) -> None:
        """After an out-of-memory error, hand cached blocks back before the retry."""
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _negatives(self, negatives: list[str]) -> list[str] | None:
        # SDXL uses zero embeddings for "no negative prompt" but encodes "" when given one, so
        # pass None when nobody asked for one, as a lone request would.
        if self.model.profile.family == "sdxl" and not any(negatives):
            return None
        return negatives

    def _step_callback(self, slots: Sequence[Slot], total: int) -> Callable[..., dict[str, Any]]:
        family = self.model.profile.family

        def callback(pipe: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            latents = tensors.get("latents")
            offset = 0
            live = False
            for slot in slots:
                live = live or not slot.is_cancelled()
                slot.on_step(i + 1, total)
                if latents is not None and slot.wants_preview() and latents.ndim == 4:
                    png = preview_png(latents[offset], family)
                    if png is not None:
                        slot.on_preview(png)
                offset += slot.request.count
            if not live:  # everyone left: stop denoising (the pipeline skips the rest)
                pipe._interrupt = True
            return tensors

        return callback
