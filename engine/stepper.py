"""Step-level batching on the worker thread: per-request denoising state and one shared tick.

`runner.py` hands a whole batch to one pipeline call, so requests can only share a call if they
match in size, steps and guidance, and a request that arrives a second late waits for the whole
batch. Here requests join and leave between denoising steps: each keeps its own scheduler copy
(diffusers schedulers are stateful), its own per-image generators, latents and step index, and a
tick runs ONE UNet forward over every sample with per-sample timesteps. Guidance is applied per
request and each request's scheduler steps only its slice, so its images equal the stock
pipeline's run alone with the same seed and settings.

Everything here runs on the engine's single worker thread (`worker.Worker` owns it and
`scheduling/step.py` schedules it).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import torch
from diffusers.utils.torch_utils import randn_tensor

from . import weighting
from .job import Slot
from .loader import LoadedModel, image_to_image
from .request import ImageRequest
from .result import GeneratedImage
from .torch_ops import (
    check_safety,
    finite_rows,
    package_images,
    pictures,
    preview_png,
    seeded_generators,
)


class Texts(Protocol):
    """What the stepper needs of its model's `Runner`: LoRAs and weighted prompts."""

    @property
    def weighted(self) -> bool: ...

    def activate(self, request: ImageRequest) -> None: ...

    def needs_embeddings(self, request: ImageRequest) -> bool: ...

    def embeddings(self, request: ImageRequest, *, cfg: bool) -> weighting.Embeddings: ...


__all__ = ["Sample", "Stepper", "unsupported_reason"]

log = logging.getLogger(__name__)
A = TypeVar("A")
R = TypeVar("R")

#: Pipelines whose denoising loop this module reproduces, by class name -> model family.
_PIPELINES = {"StableDiffusionPipeline": "sd", "StableDiffusionXLPipeline": "sdxl"}


def unsupported_reason(model: LoadedModel) -> str | None:
    """Why this model cannot run step by step (the engine then batches whole calls), or None."""
    name = type(model.pipe).__name__
    if name not in _PIPELINES:
        return f"{name} has no step-level path (only {', '.join(_PIPELINES)})"
    unet = getattr(model.pipe, "unet", None)
    if unet is None:
        return f"{name} has no UNet"
    if getattr(unet.config, "time_cond_proj_dim", None) is not None:
        return "UNets with a guidance embedding (LCM-style) are not supported"
    return None


def _each(fn: Callable[[A], R], items: Sequence[A]) -> list[R | Exception]:
    """`fn` over each item, with an item's exception in place of its result."""
    out: list[R | Exception] = []
    for item in items:
        try:
            out.append(fn(item))
        except Exception as exc:
            out.append(exc)
    return out


@dataclass(eq=False, slots=True)
class Sample:
    """One request's denoising state between ticks; owned by the worker thread."""

    slot: Slot
    scheduler: Any  # this request's own copy: set_timesteps and step state are per request
    generators: list[torch.Generator]  # one per image: initial and ancestral noise
    timesteps: torch.Tensor
    latents: torch.Tensor  # (count, C, h, w)
    cond: torch.Tensor  # text embeddings, one row per image
    uncond: torch.Tensor | None  # None when guidance <= 1: no unconditional half
    cond_added: dict[str, torch.Tensor] = field(default_factory=dict)  # SDXL text_embeds/time_ids
    uncond_added: dict[str, torch.Tensor] = field(default_factory=dict)
    step_kwargs: dict[str, Any] = field(default_factory=dict)
    index: int = 0  # timesteps done

    @property
    def request(self) -> ImageRequest:
        return self.slot.request

    @property
    def count(self) -> int:
        return self.slot.request.count

    @property
    def rows(self) -> int:
        """UNet batch rows this sample takes in a tick (twice its images under guidance)."""
        return self.count * (2 if self.uncond is not None else 1)

    @property
    def done(self) -> bool:
        return self.index >= len(self.timesteps)


class Stepper:
    """Admits requests, runs ticks and finishes requests; not thread-safe (one owner thread)."""

    def __init__(self, model: LoadedModel, runner: Texts | None = None) -> None:
        """`runner` (the model's own) sets each request's LoRAs and weights its prompts;
        without one, prompts are plain text and no LoRA is active."""
        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(reason)
        self.model = model
        self.runner = runner
        self.family = _PIPELINES[type(model.pipe).__name__]

    # Admission
    def admit_all(self, slots: Sequence[Slot]) -> list[Sample | Exception]:
        """`admit` each slot; a failure is returned in its place so it fails alone."""
        return _each(self.admit, slots)

    def admit(self, slot: Slot) -> Sample:
        """Encode the prompt once and draw the initial noise, as the pipeline's steps 3-6 do."""
        pipe = self.model.pipe
        device = self.model.device
        r = slot.request
        assert r.steps is not None and r.guidance is not None
        assert r.width is not None and r.height is not None
        cfg = r.guidance > 1.0
        scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
        scheduler.set_timesteps(r.steps, device=device)
        if self.family == "sdxl" and hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(0)  # as StableDiffusionXLPipeline does before its loop
        generators = seeded_generators(r)
        cond_added: dict[str, torch.Tensor] = {}
        uncond_added: dict[str, torch.Tensor] = {}
        runner = self.runner
        if runner is not None:
            runner.activate(r)  # a LoRA on the text encoder changes the embeddings too
        embedded = runner.embeddings(r, cfg=cfg) if runner and runner.needs_embeddings(r) else None
        prompt, negative = r.prompt, r.negative_prompt
        if runner is not None and runner.weighted:
            prompt, negative = weighting.plain_text(prompt), weighting.plain_text(negative)
        with torch.inference_mode():
            if self.family == "sdxl":
                # Zero embeddings for "no negative prompt", as a lone SDXL call would use.
                if embedded is not None:
                    cond, uncond = embedded.cond, embedded.uncond
                    pooled, neg_pooled = embedded.pooled, embedded.negative_pooled
                else:
                    cond, uncond, pooled, neg_pooled = pipe.encode_prompt(
                        prompt=prompt,
                        device=device,
                        num_images_per_prompt=r.count,
                        do_classifier_free_guidance=cfg,
                        negative_prompt=negative or None,
                    )
                encoder_2 = getattr(pipe, "text_encoder_2", None)
                projection = (
                    encoder_2.config.projection_dim
                    if encoder_2 is not None
                    else int(pooled.shape[-1])
                )
                size = (r.height, r.width)
                time_ids = pipe._get_add_time_ids(
                    size, (0, 0), size, dtype=cond.dtype, text_encoder_projection_dim=projection
                )
                time_ids = time_ids.to(device).repeat(r.count, 1)
                cond_added = {"text_embeds": pooled.to(device), "time_ids": time_ids}
                if cfg:
                    uncond_added = {"text_embeds": neg_pooled.to(device), "time_ids": time_ids}
            elif embedded is not None:
                cond, uncond = embedded.cond, embedded.uncond
            else:
                cond, uncond = pipe.encode_prompt(
                    prompt=prompt,
                    device=device,
                    num_images_per_prompt=r.count,
                    do_classifier_free_guidance=cfg,
                    negative_prompt=negative,
                )
            if r.init_image is not None:
                timesteps, latents = self._init_latents(r, scheduler, generators, cond.dtype)
            else:
                timesteps = scheduler.timesteps
                shape = (
                    r.count,
                    pipe.unet.config.in_channels,
                    r.height // pipe.vae_scale_factor,
                    r.width // pipe.vae_scale_factor,
                )
                noise = randn_tensor(shape, generator=generators, device=device, dtype=cond.dtype)
                # The request's OWN scheduler: sigma-based ones scale by their own largest sigma.
                latents = noise * scheduler.init_noise_sigma
        accepted = inspect.signature(scheduler.step).parameters
        step_kwargs: dict[str, Any] = {}
        if "eta" in accepted:
            step_kwargs["eta"] = 0.0
        if "generator" in accepted:
            step_kwargs["generator"] = generators
        return Sample(
            slot=slot,
            scheduler=scheduler,
            generators=generators,
            timesteps=timesteps,
            latents=latents,
            cond=cond,
            uncond=uncond if cfg else None,
            cond_added=cond_added,
            uncond_added=uncond_added,
            step_kwargs=step_kwargs,
        )

    def _init_latents(
        self, r: ImageRequest, scheduler: Any, generators: list[torch.Generator], dtype: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Image-to-image: the timesteps left after `strength`, and the init image encoded by
        the VAE and noised to the first of them with the request's own generators.

        Runs the stock image-to-image pipeline's own `get_timesteps` and `prepare_latents`
        with this request's scheduler swapped in, so the result is the stock one by
        construction (the swap is safe: this thread owns both pipelines).
        """
        assert r.steps is not None and r.strength is not None
        img2img = image_to_image(self.model, scheduler)
        try:
            timesteps, _ = img2img.get_timesteps(r.steps, r.strength, self.model.device)
            image = img2img.image_processor.preprocess(r.init_image)
            first = timesteps[:1].repeat(r.count)
            latents = img2img.prepare_latents(
                image, first, 1, r.count, dtype, self.model.device, generators
            )
        finally:
            img2img.scheduler = self.model.pipe.scheduler
        return timesteps, latents

    # One tick
    def tick(self, samples: Sequence[Sample]) -> list[Exception | None]:
        """Advance every sample by one denoising step with one UNet forward.

        Raises only when the shared forward fails; by then no sample has changed, so the caller
        may retry any subset. A scheduler step that fails is returned in its sample's place
        (that request fails alone; the others have stepped).
        """
        if self.runner is not None and samples:
            self.runner.activate(samples[0].request)  # a tick shares one LoRA set
        with torch.inference_mode():
            predictions = self._predict(samples)
            errors: list[Exception | None] = []
            for sample, prediction in zip(samples, predictions, strict=True):
                try:
                    t = sample.timesteps[sample.index]
                    sample.latents = sample.scheduler.step(
                        prediction, t, sample.latents, **sample.step_kwargs, return_dict=False
                    )[0]
                    sample.index += 1
                except Exception as exc:
                    errors.append(exc)
                    continue
                errors.append(None)
                self._report(sample)
        return errors

    def _predict(self, samples: Sequence[Sample]) -> list[torch.Tensor]:
        """Guided noise predictions per sample; mutates nothing a retry would see twice."""
        inputs: list[torch.Tensor] = []
        steps: list[torch.Tensor] = []
        texts: list[torch.Tensor] = []
        added: dict[str, list[torch.Tensor]] = {}
        for s in samples:
            t = s.timesteps[s.index]
            # Idempotent: Euler-type schedulers only fix their step index on the first call.
            x = s.scheduler.scale_model_input(s.latents, t)
            halves = [(s.cond, s.cond_added)]
            if s.uncond is not None:
                halves.insert(0, (s.uncond, s.uncond_added))
            for text, extra in halves:
                inputs.append(x)
                steps.append(t.reshape(1).expand(s.count))
                texts.append(text)
                for name, value in extra.items():
                    added.setdefault(name, []).append(value)
        if len({t.dtype for t in steps}) > 1:  # the UNet embeds timesteps as float anyway
            steps = [t.float() for t in steps]
        noise = self.model.pipe.unet(
            torch.cat(inputs),
            torch.cat(steps),
            encoder_hidden_states=torch.cat(texts),
            added_cond_kwargs={k: torch.cat(v) for k, v in added.items()} or None,
            return_dict=False,
        )[0]
        out: list[torch.Tensor] = []
        offset = 0
        for s in samples:
            n = s.count
            if s.uncond is not None:
                uncond, text = noise[offset : offset + n], noise[offset + n : offset + 2 * n]
                out.append(uncond + s.request.guidance * (text - uncond))  # type: ignore[operator]
            else:
                out.append(noise[offset : offset + n])
            offset += s.rows
        return out

    def _report(self, sample: Sample) -> None:
        steps = sample.request.denoising_steps or len(sample.timesteps)
        # Second-order schedulers take more timesteps than steps: report in the user's steps.
        done = round(sample.index * steps / len(sample.timesteps))
        sample.slot.on_step(done, steps)
        if sample.slot.wants_preview():
            png = preview_png(sample.latents[0], self.family)
            if png is not None:
                sample.slot.on_preview(png)

    # Finishing
    def finish_all(self, samples: Sequence[Sample]) -> list[list[GeneratedImage] | Exception]:
        """`finish` each sample; a failure is returned in its place so it fails alone."""
        return _each(self.finish, samples)

    def finish(self, sample: Sample) -> list[GeneratedImage]:
        """Decode, check and encode one finished request's images (its PNGs, in seed order),
        less those whose latents or pixels are not finite (`torch_ops.pictures`)."""
        with torch.inference_mode():
            images = pictures(self.decode(sample), finite_rows(sample.latents))
        flags = check_safety(self.model, images)
        return package_images(self.model, sample.request, images, flags)

    def decode(self, sample: Sample) -> Any:
        """Float pixels `(n, h, w, c)` in 0..1 from final latents, exactly as the family's
        pipeline decodes them with `output_type="np"`."""
        pipe = self.model.pipe
        vae = pipe.vae
        latents = sample.latents
        if self.family != "sdxl":
            image = vae.decode(
                latents / vae.config.scaling_factor, return_dict=False, generator=sample.generators
            )[0]
            return pipe.image_processor.postprocess(
                image, output_type="np", do_denormalize=[True] * image.shape[0]
            )
        # SDXL's VAE overflows in fp16: the pipeline decodes in fp32 when the config says so.
        upcast = vae.dtype == torch.float16 and vae.config.force_upcast
        if upcast:
            vae.to(dtype=torch.float32)
            latents = latents.to(torch.float32)
        try:
            mean = getattr(vae.config, "latents_mean", None)
            std = getattr(vae.config, "latents_std", None)
            if mean is not None and std is not None:
                mean_t = torch.tensor(mean).view(1, 4, 1, 1).to(latents.device, latents.dtype)
                std_t = torch.tensor(std).view(1, 4, 1, 1).to(latents.device, latents.dtype)
                latents = latents * std_t / vae.config.scaling_factor + mean_t
            else:
                latents = latents / vae.config.scaling_factor
            image = vae.decode(latents, return_dict=False)[0]
        finally:
            if upcast:
                vae.to(dtype=torch.float16)
        if getattr(pipe, "watermark", None) is not None:
            image = pipe.watermark.apply_watermark(image)
        return pipe.image_processor.postprocess(image, output_type="np")
