"""Step-level batching on the worker thread: each request runs its own stock pipeline call,
and one shared tick runs the denoiser once for all of them.

`runner.py` hands a whole batch to one pipeline call, so requests can only share a call if
they match in size, steps and guidance, and a request that arrives a second late waits for
the whole batch. Here requests join and leave between denoising steps: each request's stock
pipeline call runs as a `RequestRun` (`dispatch.py`) with its own scheduler copy, generators
and latents, and stops whenever it calls the denoiser; a tick merges the waiting calls of
every request of a group into ONE forward with per-sample timesteps (and per-sample guidance
where the model takes it), and hands each request its share (`families.Family.merge` and
`split`). Encoding, latents, scheduler steps, guidance and decoding are the stock pipeline's
own code, so each request's images equal the stock pipeline's run alone.

Everything here runs on the engine's single worker thread (`worker.Worker` owns it and
`scheduling/step.py` schedules it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import torch

from . import weighting
from .dispatch import RequestRun, with_proxy
from .families import DenoiserCall, Family, family_of
from .job import Slot
from .loader import LoadedModel, request_pipeline
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

__all__ = ["MAX_CALLS_PER_STEP", "Sample", "Stepper", "unsupported_reason"]

#: Denoiser calls one step may make before its scheduler steps (a bound, should a pipeline
#: never call back: two for true classifier-free guidance).
MAX_CALLS_PER_STEP = 4

log = logging.getLogger(__name__)
A = TypeVar("A")
R = TypeVar("R")


class Texts(Protocol):
    """What the stepper needs of its model's `Runner`: LoRAs and weighted prompts."""

    @property
    def weighted(self) -> bool: ...

    def activate(self, request: ImageRequest) -> None: ...

    def needs_embeddings(self, request: ImageRequest) -> bool: ...

    def embeddings(self, request: ImageRequest, *, cfg: bool) -> weighting.Embeddings: ...


def unsupported_reason(model: LoadedModel) -> str | None:
    """Why this model cannot run step by step (the engine then batches whole calls), or None."""
    try:
        family = family_of(model.pipe)
    except ValueError as exc:
        return str(exc)
    if getattr(model.pipe, family.denoiser, None) is None:
        return f"{type(model.pipe).__name__} has no {family.denoiser}"
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
    """One request's run between ticks; owned by the worker thread."""

    slot: Slot
    run: RequestRun | None = None
    call: DenoiserCall | None = None  # its denoiser call, waiting for the next tick
    rows: int = 0  # denoiser batch rows that call takes (images, twice with guidance)
    output: Any = None  # its pipeline's output, once the run has ended
    latents: torch.Tensor | None = None  # after its latest step (previews, the NaN check)
    calls: int = 0  # denoiser calls it has made (its steps, times two for some guidance)
    stepped: bool = False  # its scheduler stepped since the tick began (its callback ran)
    steps_done: int = 0  # in the user's steps, as its progress shows them
    steps_total: int = 0

    @property
    def steps_left(self) -> int:
        """Denoising steps it still has to run (all of them before its first step)."""
        total = self.steps_total or self.slot.request.denoising_steps
        return max(0, total - self.steps_done)

    @property
    def request(self) -> ImageRequest:
        return self.slot.request

    @property
    def count(self) -> int:
        return self.slot.request.count

    @property
    def done(self) -> bool:
        return self.call is None


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
        self.family: Family = family_of(model.pipe)
        self.denoiser = getattr(model.pipe, self.family.denoiser)

    # Admission
    def admit_all(self, slots: Sequence[Slot]) -> list[Sample | Exception]:
        """`admit` each slot; a failure is returned in its place so it fails alone."""
        return _each(self.admit, slots)

    def admit(self, slot: Slot) -> Sample:
        """Start the request's stock pipeline call and run it to its first denoiser call
        (its prompt encoded, its initial noise drawn)."""
        r = slot.request
        assert r.guidance is not None
        runner = self.runner
        if runner is not None:
            runner.activate(r)  # a LoRA on the text encoder changes the embeddings too
        pipe = with_proxy(request_pipeline(self.model, r), self.family.denoiser)
        generators = seeded_generators(r)
        with torch.inference_mode():
            texts = None
            if runner is not None and self.family.weighted and runner.needs_embeddings(r):
                texts = runner.embeddings(r, cfg=r.guidance > 1.0)
            kwargs = self.family.call_kwargs(pipe, r, generators, texts) | self.model.call_extra
        sample = Sample(slot)
        kwargs["callback_on_step_end"] = self._callback(sample)
        kwargs["callback_on_step_end_tensor_inputs"] = list(self.family.callback_tensors)
        sample.run = RequestRun(lambda: pipe(**kwargs))
        self._advance(sample, None)
        return sample

    def discard(self, samples: Sequence[Sample]) -> None:
        """End runs that will not be ticked again (cancelled, failed): their pipelines stop
        where they wait, here on the thread that owns them."""
        for sample in samples:
            if sample.run is not None and not sample.run.dead:
                sample.run.throw()
            sample.call = None

    def _advance(self, sample: Sample, share: Any) -> None:
        """Start the request's run (`share` None), or resume it with its share of a denoiser
        call, until its next call (or the end of its pipeline call)."""
        run = sample.run
        assert run is not None
        with torch.inference_mode():
            answer = run.switch() if share is None else run.switch(share)
        if run.dead:
            sample.call, sample.rows, sample.output = None, 0, answer
        else:
            assert isinstance(answer, DenoiserCall)
            sample.call, sample.rows = answer, self.family.rows(answer)
            sample.calls += 1

    def _callback(self, sample: Sample) -> Callable[..., dict[str, Any]]:
        """The pipeline's step callback: progress in the user's steps, previews on request."""
        family, request = self.family, sample.request

        def callback(pipe: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            latents = tensors.get("latents")
            if latents is not None:
                sample.latents = latents
            sample.stepped = True
            total = int(getattr(pipe, "num_timesteps", 0) or request.denoising_steps)
            # Second-order schedulers take more timesteps than steps: count the user's.
            order = getattr(pipe.scheduler, "order", 1) or 1
            steps = max(1, round(total / order))
            sample.steps_done = round((i + 1) * steps / max(1, total))
            sample.steps_total = steps
            sample.slot.on_step(sample.steps_done, steps)
            if latents is not None and sample.slot.wants_preview():
                first = family.preview_latents(pipe, latents, request)
                png = None if first is None else preview_png(first, family.name)
                if png is not None:
                    sample.slot.on_preview(png)
            return tensors

        return callback

    # One tick
    def tick(self, samples: Sequence[Sample]) -> list[Exception | None]:
        """Advance every sample by one denoising step: one forward over all their waiting
        denoiser calls, and another over the second calls of those whose step takes two
        (true classifier-free guidance calls the denoiser twice before stepping).

        Raises only when a shared forward fails; a failed forward changes no sample, so the
        caller may retry any subset (a sample between its two calls goes on with its second).
        A run that fails after its share (its scheduler step, its decoding) is returned in
        its sample's place: that request fails alone.
        """
        waiting = [s for s in samples if s.call is not None]
        if self.runner is not None and waiting:
            self.runner.activate(waiting[0].request)  # a tick shares one LoRA set
        errors: dict[int, Exception | None] = {}
        for sample in waiting:
            sample.stepped = False
        for _ in range(MAX_CALLS_PER_STEP):
            if not waiting:
                break
            self._forward(waiting, errors)
            waiting = [s for s in waiting if s.call is not None and not s.stepped]
        return [errors.get(id(s)) for s in samples]

    def _forward(self, waiting: Sequence[Sample], errors: dict[int, Exception | None]) -> None:
        """One denoiser forward for the waiting calls of `waiting`; each run then goes on
        with its share (an error in its place when its own code fails)."""
        calls = [s.call for s in waiting]
        with torch.inference_mode():  # inference tensors throughout, as compile expects
            merged = self.family.merge(calls)  # type: ignore[arg-type]
            output = self.denoiser(*merged.args, **merged.kwargs)
            shares = self.family.split(output, calls)  # type: ignore[arg-type]
        for sample, share in zip(waiting, shares, strict=True):
            try:
                self._advance(sample, share)
                errors[id(sample)] = None
            except Exception as exc:
                sample.call = None
                errors[id(sample)] = exc

    # Finishing
    def finish_all(self, samples: Sequence[Sample]) -> list[list[GeneratedImage] | Exception]:
        """`finish` each sample; a failure is returned in its place so it fails alone."""
        return _each(self.finish, samples)

    def finish(self, sample: Sample) -> list[GeneratedImage]:
        """Check and encode one finished request's images (its PNGs, in seed order), less
        those whose latents or pixels are not finite (`torch_ops.pictures`)."""
        assert sample.output is not None, "finish() before the run ended"
        latents_ok = None if sample.latents is None else finite_rows(sample.latents)
        images = pictures(sample.output.images, latents_ok)
        flags = check_safety(self.model, images)
        return package_images(self.model, sample.request, images, flags)
