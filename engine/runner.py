"""The one owner of torch and the pipeline: runs a batch of requests as one pipeline call.

Everything here executes on the engine's single worker thread. The service hands it a list
of `Slot`s that share a `BatchKey`; it returns their images or raises, and the service decides
whether to split and retry.
"""

from __future__ import annotations

import copy
import inspect
import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .config import EngineConfig
from .loader import LoadedModel, load_model
from .pngmeta import Parameters, encode_png
from .preview import latents_to_preview
from .request import ImageRequest, ModelProfile
from .result import GeneratedImage

__all__ = [
    "Runner",
    "Slot",
    "check_safety",
    "describe_failure",
    "is_fatal",
    "package_images",
    "preview_png",
    "seeded_generators",
]

log = logging.getLogger(__name__)

_FATAL_MARKERS = ("device-side assert", "illegal memory access", "CUDA error: unspecified launch")


def is_fatal(exc: BaseException) -> bool:
    """Errors after which the worker cannot go on (a poisoned CUDA context, an interpreter exit)."""
    if not isinstance(exc, Exception):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in _FATAL_MARKERS)


def describe_failure(exc: BaseException) -> str:
    """A sentence for users: what went wrong and what they can change; never a traceback."""
    if isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower():
        return "The GPU ran out of memory making this image. Try a smaller size or fewer images."
    return f"The image could not be generated (internal error: {type(exc).__name__})."


@dataclass(slots=True)
class Slot:
    """One request inside a batch, with the hooks the runner calls from the worker thread."""

    request: ImageRequest
    on_step: Callable[[int, int], None]
    on_preview: Callable[[bytes], None]
    wants_preview: Callable[[], bool]
    is_cancelled: Callable[[], bool]


def seeded_generators(request: ImageRequest) -> list[torch.Generator]:
    """One CPU generator per image, seeded `seed + i`: same image on any device and in any batch."""
    return [torch.Generator("cpu").manual_seed(seed) for seed in request.seeds]


def preview_png(latents: torch.Tensor, family: str) -> bytes | None:
    """A fast PNG of one sample's latents `(4, h, w)`, or None for layouts it cannot read."""
    image = latents_to_preview(latents, family)
    if image is None:
        return None
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def check_safety(model: LoadedModel, images: Sequence[Any]) -> list[bool]:
    """The safety checker's verdict per image (all False without one); images are not altered."""
    if model.checker is None or model.feature_extractor is None:
        return [False] * len(images)
    inputs = model.feature_extractor(list(images), return_tensors="pt")
    pixel = inputs.pixel_values.to(device=model.device, dtype=model.checker.dtype)
    arrays = np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in images])
    _, flags = model.checker(images=arrays, clip_input=pixel)
    return [bool(f) for f in flags]


def package_images(
    model: LoadedModel, request: ImageRequest, images: Sequence[Any], flags: Sequence[bool]
) -> list[GeneratedImage]:
    """PNGs carrying their parameters, one per seed of `request`, in seed order."""
    assert request.steps is not None and request.guidance is not None
    assert request.width is not None and request.height is not None
    made = []
    for n, (seed, image, flagged) in enumerate(zip(request.seeds, images, flags, strict=True)):
        params = Parameters(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            steps=request.steps,
            sampler=model.profile.sampler,
            cfg_scale=request.guidance,
            seed=seed,
            width=request.width,
            height=request.height,
            model=model.profile.name,
        )
        made.append(
            GeneratedImage(
                png=encode_png(image, params),
                seed=seed,
                index=n,
                width=request.width,
                height=request.height,
                flagged=flagged,
            )
        )
    return made


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
        for slot in slots:
            prompts += [slot.request.prompt] * slot.request.count
            negatives += [slot.request.negative_prompt] * slot.request.count
            generators += seeded_generators(slot.request)

        kwargs: dict[str, Any] = {
            "prompt": prompts,
            "negative_prompt": self._negatives(negatives),
            "num_inference_steps": key.steps,
            "guidance_scale": key.guidance,
            "width": key.width,
            "height": key.height,
            "generator": generators,
            "output_type": "pil",
        }
        if self._step_callback_ok:
            kwargs["callback_on_step_end"] = self._step_callback(slots, key.steps)
        with torch.inference_mode():
            images = model.pipe(**kwargs).images
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
