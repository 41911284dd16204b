"""Loads one model (with its LoRAs) and runs a batch of requests as one pipeline call.

`load` runs on the worker's loader thread while the model is nobody else's; from then on
everything executes on the engine's single worker thread (`worker.Worker` owns it). The
batch scheduler hands it a list of `Slot`s that share a `BatchKey` (one model, one LoRA
set); it returns their images or raises, and the scheduler decides whether to split and retry.
"""

from __future__ import annotations

import copy
import gc
import inspect
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch

from . import weighting
from .acceleration import accelerate, warm_up
from .caching import batch_pipeline
from .config import EngineConfig, ModelSpec
from .families import Family, family_of
from .job import Slot
from .loader import LoadedModel, load_model, pipeline_for
from .lora import LoraState, load_loras
from .profile import ModelProfile
from .request import ImageRequest
from .result import GeneratedImage
from .stepper import Sample, Stepper, unsupported_reason
from .torch_ops import (
    check_safety,
    finite_rows,
    package_images,
    pictures,
    preview_png,
    seeded_generators,
)

__all__ = ["Runner"]

log = logging.getLogger(__name__)


class Runner:
    """Loads one model and runs its batches; not thread-safe by design (one owner thread)."""

    def __init__(self, config: EngineConfig, spec: ModelSpec | None = None) -> None:
        self.config = config
        self.spec = spec or config.model_spec(config.default_model_name)
        self._model: LoadedModel | None = None
        self._loras: LoraState | None = None
        self._step_callback_ok = False
        self._counter: Any = None  # the loop thread's own tokenizer, see `count_tokens`
        self.profile: ModelProfile | None = None  # kept after `unload`, for validation
        self.step_reason: str | None = None  # why it cannot run step by step, once loaded
        self.family: Family | None = None  # known once loaded (and kept after `unload`)
        self._stepper: Stepper | None = None  # for batches of one-per-call edits (`_run_each`)

    @property
    def model(self) -> LoadedModel:
        if self._model is None:
            raise RuntimeError("the model is not loaded")
        return self._model

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self) -> ModelProfile:
        """Load the model and every configured LoRA that fits it (left inactive); raises
        `ValueError` with one line when a LoRA cannot load into it."""
        torch.set_grad_enabled(False)
        model = load_model(self.config, self.spec)
        fitting = [lora for lora in self.config.loras if lora.fits(self.spec.name)]
        if fitting and self.config.compile != "off":
            log.warning(
                "model %s: LoRAs with compile = %r: every LoRA set and weight compiles the UNet "
                'again (peft keeps weights as Python numbers); consider compile = "off"',
                self.spec.name,
                self.config.compile,
            )
        if fitting:
            load_loras(
                model.pipe, fitting, model_name=self.spec.name, cache_dir=self.config.cache_dir
            )
        log.info("%s", accelerate(model, self.config))
        warm_up(model)
        params = inspect.signature(model.pipe.__call__).parameters
        self._step_callback_ok = "callback_on_step_end" in params
        tokenizer = getattr(model.pipe, "tokenizer", None)
        self._counter = copy.deepcopy(tokenizer) if tokenizer is not None else None
        self._loras = LoraState(model.pipe)
        self._model = model
        self.family = family_of(model.pipe)
        self.profile = model.profile
        self.step_reason = unsupported_reason(model)
        return model.profile

    def unload(self) -> None:
        """Free the pipeline (its profile and token counter stay, for validation)."""
        self._model = None
        self._loras = None
        self._stepper = None
        gc.collect()
        self.release_memory()

    @property
    def weighted(self) -> bool:
        """Whether A1111 weights reach the model (through CLIP's or T5's embeddings); other
        families get their text with the syntax removed."""
        return self.family is not None and self.family.weighted

    @property
    def chunked(self) -> bool:
        """Whether long prompts take more 77-token windows (SD, SDXL)."""
        return self.family is not None and self.family.chunked

    def count_chunks(self, prompt: str, negative: str) -> int:
        """77-token windows the weighted prompts take; safe on the loop thread (own tokenizer).
        The weights were checked by `request.validate`."""
        if self._counter is None:
            return 1
        return weighting.chunks_needed(prompt, negative, self._counter)

    def activate(self, request: ImageRequest) -> None:
        """Make the request's LoRA set the active one (cheap when it already is)."""
        assert self._loras is not None
        self._loras.activate(request.loras)

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
        """One pipeline call for every image of every slot; images come back per slot, less
        those whose numbers are not finite (`torch_ops.pictures`)."""
        model = self.model
        key = slots[0].request.key
        if any(s.request.key != key for s in slots):
            raise ValueError("a batch mixes models, LoRAs, sizes, steps or guidance")
        if key.inpaint == "masked" and len(slots) > 1:  # one picture per call (`mask_kwargs`)
            return [images for slot in slots for images in self.run([slot])]
        self.activate(slots[0].request)
        assert self.family is not None
        requests = [slot.request for slot in slots]
        if requests[0].references and self.family.one_edit_per_call and len(slots) > 1:
            return self._run_each(slots)
        generators = [g for r in requests for g in seeded_generators(r)]
        texts = None
        if self.family.weighted and any(self.needs_embeddings(r) for r in requests):
            # Every request's embeddings (equal to the stock ones for a plain prompt).
            texts = [self.embeddings(r, cfg=key.guidance > 1.0) for r in requests]
        pipe = pipeline_for(model, requests[0])
        if model.cache is not None and any(r.fast for r in requests):
            pipe = batch_pipeline(pipe, self.family, model.cache, requests)[0]
        kwargs = self.family.batch_kwargs(pipe, requests, generators, texts)
        kwargs |= model.call_extra
        last: dict[str, torch.Tensor] = {}  # the latents after the latest step
        if self._step_callback_ok:
            total = slots[0].request.denoising_steps
            kwargs["callback_on_step_end"] = self._step_callback(slots, total, last)
        with torch.inference_mode():
            pixels = pipe(**kwargs).images
            latents = last.get("latents")
            images = pictures(pixels, None if latents is None else finite_rows(latents))
        flags = check_safety(model, images)

        out: list[list[GeneratedImage]] = []
        i = 0
        for slot in slots:
            n = slot.request.count
            out.append(package_images(model, slot.request, images[i : i + n], flags[i : i + n]))
            i += n
        return out

    def _run_each(self, slots: Sequence[Slot]) -> list[list[GeneratedImage]]:
        """A batch of edits whose stock pipeline takes one request's pictures per call
        (`Family.one_edit_per_call`): each request runs its own call, and their denoiser calls
        are merged into one forward a step, as step scheduling does (`stepper.Stepper`), so
        the batch still shares its forwards. Raises the first failure (the batch scheduler
        then splits the batch)."""
        if self._stepper is None:
            self._stepper = Stepper(self.model, self)
        stepper = self._stepper
        samples = stepper.admit_all(slots)
        try:
            for sample in samples:
                if isinstance(sample, Exception):
                    raise sample
            active = [s for s in samples if isinstance(s, Sample)]
            while active:
                for error in stepper.tick(active):
                    if error is not None:
                        raise error
                active = [s for s in active if not s.done]
            finished = stepper.finish_all([s for s in samples if isinstance(s, Sample)])
        finally:
            stepper.discard([s for s in samples if isinstance(s, Sample)])
        out = []
        for images in finished:
            if isinstance(images, Exception):
                raise images
            out.append(images)
        return out

    def release_memory(self) -> None:
        """After an out-of-memory error, hand cached blocks back before the retry."""
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def needs_embeddings(self, request: ImageRequest) -> bool:
        """Whether the request's prompts are weighted (or, SD and SDXL, longer than one
        window), or the model skips CLIP layers on SD 1.x/2.x (diffusers' own `clip_skip`
        fails there under transformers 5), so its embeddings are made here (worker thread:
        it tokenizes with the pipeline's own tokenizer)."""
        model = self.model
        if not self.weighted:
            return False
        if model.clip_skip and model.profile.family == "sd":
            return True
        if not self.chunked:  # one sequence of the stock length: only weights change it
            return any(weighting.has_weights(t) for t in (request.prompt, request.negative_prompt))
        return weighting.needs_embeddings(
            request.prompt, request.negative_prompt, model.pipe.tokenizer
        )

    def embeddings(self, request: ImageRequest, *, cfg: bool) -> weighting.Embeddings:
        """The request's weighted text embeddings (chunked on SD and SDXL), one row per image."""
        model = self.model
        assert self.family is not None
        return self.family.embeddings(
            model.pipe,
            request.prompt,
            request.negative_prompt,
            device=model.device,
            count=request.count,
            cfg=cfg,
            clip_skip=model.clip_skip,
        )

    def _step_callback(
        self, slots: Sequence[Slot], total: int, last: dict[str, torch.Tensor]
    ) -> Callable[..., dict[str, Any]]:
        """Progress, previews and cancellation after each step; keeps the step's latents in
        `last`, so the final ones are checked for NaN."""
        family = self.model.profile.family

        def callback(pipe: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            latents = tensors.get("latents")
            if latents is not None:
                last["latents"] = latents
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
