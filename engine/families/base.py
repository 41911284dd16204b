"""What a model family is to the engine: one small description per family, the way vLLM
registers model architectures, and the generic parts every family shares.

A family names the diffusers pipelines it serves and how one request becomes the stock
pipeline's arguments (`call_kwargs`). The step-level loop (`stepper.py`) runs each request's
own stock pipeline call and batches only the denoiser calls of all running requests into one
forward; a family says how those calls merge and split (`merge`, `split`): which arguments
are per sample (concatenated along the batch) and which are shared (positional ids, equal
for requests of one group). Everything else (prompt encoding, latents, the scheduler with
its resolution-dependent shift, guidance, decoding) is the stock pipeline's own code, so
each image equals the stock pipeline run alone by construction.

Runs on the engine's worker thread only (torch).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch

from ..request import ImageRequest

__all__ = ["DenoiserCall", "Family", "FamilyDefaults", "call_default"]


@dataclass(frozen=True, slots=True)
class FamilyDefaults:
    """What a bare prompt gets on a model of this family."""

    steps: int
    guidance: float
    native_size: int
    multiple: int = 8  # width and height are multiples of this


@dataclass(slots=True)
class DenoiserCall:
    """One call of the denoiser as a pipeline made it (positional and keyword arguments)."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    #: The pipeline's cache context of the call ("cond", "uncond" under true CFG; "" when the
    #: pipeline names none): step caches keep a state per context, as diffusers' hooks do.
    context: str = ""

    def first_tensor(self) -> torch.Tensor:
        value = self.args[0] if self.args else next(iter(self.kwargs.values()))
        if isinstance(value, (list, tuple)):  # a list of per-sample tensors
            value = value[0]
        assert isinstance(value, torch.Tensor)
        return value


def call_default(pipe: Any, name: str, fallback: Any) -> Any:
    """A default of the stock pipeline's `__call__` (what a bare call would use)."""
    parameter = inspect.signature(type(pipe).__call__).parameters.get(name)
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return fallback
    return parameter.default


def _cat(values: Sequence[Any], rows: Sequence[int], name: str) -> Any:
    """Per-sample values of several calls as one batch."""
    first = values[0]
    if first is None:
        if any(v is not None for v in values):
            raise ValueError(f"denoiser argument {name!r} is set by only some requests")
        return None
    if isinstance(first, Mapping):
        return {k: _cat([v[k] for v in values], rows, f"{name}.{k}") for k in first}
    if isinstance(first, list):  # per-sample lists (variable-length inputs)
        return [item for value in values for item in value]
    if isinstance(first, torch.Tensor):
        parts = []
        for value, n in zip(values, rows, strict=True):
            if value.ndim == 0 or (value.shape[0] == 1 and n != 1):
                value = value.reshape(1, *value.shape[1:]).expand(n, *value.shape[1:])
            parts.append(value)
        return torch.cat(parts)
    return _same(values, name)


def _take(value: Any, rows: int, index: Sequence[int]) -> Any:
    """The rows `index` of a per-sample value of a call of `rows` rows (a 0-dim or one-row
    tensor is every row's: `_cat` expands it again)."""
    if isinstance(value, Mapping):
        return {k: _take(v, rows, index) for k, v in value.items()}
    if isinstance(value, list) and len(value) == rows:
        return [value[i] for i in index]
    if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == rows:
        return value[torch.as_tensor(list(index), device=value.device)]
    return value


def _same(values: Sequence[Any], name: str) -> Any:
    """A value every call must share (ids, flags, attention options)."""
    first = values[0]
    for value in values[1:]:
        equal = (
            torch.equal(value, first)
            if isinstance(first, torch.Tensor) and isinstance(value, torch.Tensor)
            else value == first
        )
        if not equal:
            raise ValueError(f"denoiser argument {name!r} differs between batched requests")
    return first


class Family:
    """A model family (see the module doc); subclasses fill in the class attributes and
    override what their pipeline does differently."""

    #: The name in the batch key and the ledger ("sd", "sdxl", "flux"...).
    name: str = ""
    #: As people call it (`/models`): "Stable Diffusion", "FLUX.1".
    label: str = ""
    #: The half-precision dtype it runs in on a GPU with `[engine] dtype = "auto"`.
    half: str = "bfloat16"
    #: Text-to-image pipeline classes (diffusers class names) of this family.
    pipelines: tuple[str, ...] = ()
    #: The pipeline attribute of the module that denoises ("unet" or "transformer").
    denoiser: str = "unet"
    #: Positional arguments of the denoiser, by name, in order (for merging by name).
    positional: tuple[str, ...] = ()
    #: Denoiser arguments shared by every sample of a call: equal within a group.
    shared: frozenset[str] = frozenset()
    #: Whether the family reads a negative prompt (classifier-free guidance).
    negative_prompt: bool = True
    #: Whether A1111 weights reach the model: through CLIP's embeddings (`weighting`) or
    #: T5's (`weighting_t5`), else they are removed from the text.
    weighted: bool = False
    #: Whether a prompt longer than CLIP's window takes more 77-token windows (SD, SDXL: the
    #: UNet reads any length); the others read the stock call's one sequence.
    chunked: bool = False
    #: The family's image-to-image pipeline classes by text-to-image class (absent: none).
    img2img: Mapping[str, str] = MappingProxyType({})
    #: Tensors the pipeline's step callback may ask for (latents for progress previews).
    callback_tensors: tuple[str, ...] = ("latents",)
    #: Pipeline classes that edit by instruction, with the reference pictures they take at
    #: most (absent: the class does not edit).
    edits: Mapping[str, int] = MappingProxyType({})
    #: The text-to-image pipeline of an edit-only class, on the same modules (absent: the
    #: class makes pictures from a prompt alone too).
    text2image: Mapping[str, str] = MappingProxyType({})
    #: Whether one stock call holds the edits of one request only: its pictures are shared
    #: by every image of the call (FLUX.2 klein), or it takes one prompt (Qwen-Image-Edit).
    #: Batch scheduling then runs such a batch's requests as one call each, their denoiser
    #: calls merged as in step scheduling (`runner.Runner.run`).
    one_edit_per_call: bool = False
    #: The family's inpaint pipeline classes by loaded class (absent: it does not inpaint);
    #: an inpaint-only class (its denoiser reads the mask: FLUX.1 Fill) maps to itself.
    inpaint: Mapping[str, str] = MappingProxyType({})

    def mask_reader(self, pipe: Any) -> str | None:
        """The inpaint class to serve a loaded text-to-image `pipe` as, when its denoiser
        reads a mask (an SD inpainting UNet's 9 input channels), else None."""
        return None

    def defaults(self, pipe: Any, source: str) -> FamilyDefaults:
        raise NotImplementedError

    def stock_defaults(self, pipe: Any, source: str, steps: int, guidance: float) -> FamilyDefaults:
        """The stock call's own steps and guidance (`steps`, `guidance`: where its signature
        has none) at the pipeline's native size; a builtin's are 4 steps at 64 pixels."""
        native = pipe.default_sample_size * pipe.vae_scale_factor
        steps = call_default(pipe, "num_inference_steps", steps)
        guidance = float(call_default(pipe, self.guidance_argument, guidance))
        if source.startswith("builtin:"):
            native, steps = 64, 4
        return FamilyDefaults(steps, guidance, native, self.multiple)

    def reference_fit(self, pipe: Any, native: int) -> tuple[tuple[tuple[int, int], ...], int, int]:
        """How the edit pipeline resizes a reference picture (`request.reference_size`): the
        sizes it picks from, else the area (0: `native` squared) and the multiple."""
        return (), 0, self.multiple

    #: Width and height are multiples of this.
    multiple: int = 8

    #: The stock `__call__`'s argument our `guidance` goes to.
    guidance_argument: str = "guidance_scale"
    #: Whether the image-to-image pipeline takes width and height (SD's does not: the
    #: picture's size is the image's).
    sized_img2img: bool = True

    def embeddings(
        self,
        pipe: Any,
        prompt: str,
        negative: str,
        *,
        device: torch.device | str,
        count: int,
        cfg: bool,
        clip_skip: int = 0,
    ) -> Any:
        """A `weighted` family's weighted prompt embeddings (`weighting.Embeddings`), as its
        stock `encode_prompt` returns them for a plain prompt; `texts` passes them on."""
        raise NotImplementedError(f"{self.label} models read no prompt weights")

    # The stock call
    def call_kwargs(
        self, pipe: Any, request: ImageRequest, generators: list[torch.Generator], texts: Any
    ) -> dict[str, Any]:
        """The stock pipeline's arguments for one request (`texts`: its weighted embeddings
        when the family weights prompts and the request needs them, else None)."""
        return self.batch_kwargs(pipe, [request], generators, None if texts is None else [texts])

    def batch_kwargs(
        self,
        pipe: Any,
        requests: Sequence[ImageRequest],
        generators: list[torch.Generator],
        texts: Sequence[Any] | None,
    ) -> dict[str, Any]:
        """The stock pipeline's arguments for several requests that share a batch key (batch
        scheduling: one whole call; one request in step scheduling): one prompt (and picture)
        and one generator per image, float pixels out (so NaN shows: `torch_ops.pictures`)."""
        first = requests[0]
        kwargs: dict[str, Any] = {
            **self.texts(requests, texts),
            "num_inference_steps": first.steps,
            self.guidance_argument: first.guidance,
            "generator": generators,
            "output_type": "np",
        }
        if first.init_image is None or self.sized_img2img or first.mask is not None:
            kwargs |= {"width": first.width, "height": first.height}
        if first.init_image is not None:
            if not self.img2img and first.mask is None:  # validation refuses it first
                raise ValueError(f"{type(pipe).__name__} models have no image-to-image pipeline")
            kwargs["image"] = [r.init_image for r in requests for _ in range(r.count)]
            kwargs["strength"] = first.strength
        if first.references:
            if type(pipe).__name__ not in self.edits:  # validation refuses it first
                raise ValueError(f"{type(pipe).__name__} models do not edit by instruction")
            if self.one_edit_per_call and len(requests) > 1:
                raise ValueError(f"{type(pipe).__name__} takes one request's edit per call")
            kwargs |= self.edit_kwargs(pipe, requests)
        if first.mask is not None:
            kwargs |= self.mask_kwargs(requests)
        return self.finish_kwargs(pipe, requests, kwargs)

    def finish_kwargs(
        self, pipe: Any, requests: Sequence[ImageRequest], kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        """The family's last word on `batch_kwargs`' arguments (FLUX.1 Kontext's `max_area`,
        Qwen-Image-Edit's one prompt); as they are by default."""
        return kwargs

    def edit_kwargs(self, pipe: Any, requests: Sequence[ImageRequest]) -> dict[str, Any]:
        """The edit pipeline's picture arguments (the family's own: see its module doc)."""
        return {"image": list(requests[0].references)}

    def mask_kwargs(self, requests: Sequence[ImageRequest]) -> dict[str, Any]:
        """The inpaint pipeline's mask arguments: one blurred mask per image; for "Only
        masked", diffusers' `padding_mask_crop`, which takes one picture and one mask per
        call (so one request: `runner.Runner.run` calls it once per request) and pastes the
        crop back into PIL pictures."""
        from ..inpaint import DEFAULT_MASK_BLUR, blurred

        def mask(r: ImageRequest) -> Any:
            assert r.mask is not None
            return blurred(r.mask, DEFAULT_MASK_BLUR if r.mask_blur is None else r.mask_blur)

        first = requests[0]
        if first.inpaint_padding is None:
            return {"mask_image": [mask(r) for r in requests for _ in range(r.count)]}
        if len(requests) > 1:
            raise ValueError("padding_mask_crop takes one request's picture and mask per call")
        return {
            "image": first.init_image,
            "mask_image": mask(first),
            "padding_mask_crop": first.inpaint_padding,
            "output_type": "pil",
        }

    def texts(
        self, requests: Sequence[ImageRequest], embedded: Sequence[Any] | None
    ) -> dict[str, Any]:
        """The prompts' arguments: plain text (A1111 syntax removed), one per image, and the
        negative prompts where the family reads them."""
        out: dict[str, Any] = {"prompt": self.each_image(requests, "prompt")}
        if self.negative_prompt:
            out["negative_prompt"] = self.each_image(requests, "negative_prompt")
        return out

    @staticmethod
    def each_image(requests: Sequence[ImageRequest], field: str) -> list[str]:
        """`field` of each request as the model reads it (`weighting.plain_text`), once per
        image."""
        from .. import weighting

        return [weighting.plain_text(getattr(r, field)) for r in requests for _ in range(r.count)]

    # The batched denoiser call
    def rows(self, call: DenoiserCall) -> int:
        return int(call.first_tensor().shape[0])

    def merge(self, calls: Sequence[DenoiserCall]) -> DenoiserCall:
        """One call for every sample of `calls` (per-sample arguments concatenated, shared
        ones checked equal)."""
        rows = [self.rows(c) for c in calls]
        named = [self._by_name(c) for c in calls]
        merged: dict[str, Any] = {}
        for name in named[0]:
            values = [n.get(name) for n in named]
            if name == "return_dict":
                merged[name] = False
            elif name in self.shared:
                merged[name] = _same(values, name)
            else:
                merged[name] = _cat(values, rows, name)
        # As the pipeline passed them (hooks on the module may read them by position).
        positional = self.positional[: len(calls[0].args)]
        return DenoiserCall(tuple(merged.pop(n) for n in positional), merged)

    def take(self, call: DenoiserCall, index: Sequence[int]) -> DenoiserCall:
        """The call for its rows `index` only (the inverse of `merge`): how a step cache
        gives each request of a batch-scheduled pipeline call its own rows."""
        rows = self.rows(call)
        named = {
            name: value if name in self.shared else _take(value, rows, index)
            for name, value in self._by_name(call).items()
        }
        positional = self.positional[: len(call.args)]
        return DenoiserCall(tuple(named.pop(n) for n in positional), named, call.context)

    def arguments(self, call: DenoiserCall) -> dict[str, Any]:
        """The call's arguments by name."""
        return self._by_name(call)

    def split(self, output: Any, calls: Sequence[DenoiserCall]) -> list[Any]:
        """The merged call's output, cut back into each call's own (as `return_dict=False`
        would give it: a one-tuple)."""
        noise = output[0] if isinstance(output, (tuple, list)) else output.sample
        parts = []
        offset = 0
        for call in calls:
            n = self.rows(call)
            part = noise[offset : offset + n]
            offset += n
            wants_dict = call.kwargs.get("return_dict", True)
            parts.append(self.wrap(part) if wants_dict else (part,))
        return parts

    def wrap(self, noise: torch.Tensor) -> Any:
        """The denoiser's output object, for a pipeline that asked for `return_dict=True`."""
        return (noise,)

    def _by_name(self, call: DenoiserCall) -> dict[str, Any]:
        if len(call.args) > len(self.positional):
            raise ValueError(f"{self.name}: the denoiser got more positional arguments than known")
        return {**dict(zip(self.positional, call.args, strict=False)), **call.kwargs}

    # Showing progress
    def preview_latents(self, pipe: Any, latents: torch.Tensor, request: ImageRequest) -> Any:
        """The first image's latents as (channels, h, w), for a progress preview; None when
        the family has no preview."""
        return latents[0] if latents.ndim == 4 else None
