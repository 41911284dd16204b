"""Loading a diffusers text-to-image pipeline: device, dtype, scheduler, and what it expects.

Runs on the engine's worker thread only (it imports torch and diffusers).

A model comes from a hub id, a diffusers folder, a builtin tiny model, or a single checkpoint
file as civitai and A1111 users have them (`.safetensors`, or a `.ckpt` torch reads without
running code): diffusers' `from_single_file` converts it, with the component configs of its
family's reference repository on the hub (configs and tokenizers only, a few MB, fetched once
into the hub cache).
"""

from __future__ import annotations

import copy
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import EngineConfig, ModelSpec
from .devices import pick_device, pick_dtype
from .model_hash import model_hash
from .profile import ModelProfile
from .quantization import pipeline_quantization, quantization_config
from .recipes import call_extra, sampler_name, scheduler_for
from .request import ImageRequest
from .single_file import SINGLE_FILE, base_of, file_kind, from_single_file
from .sources import (
    CHECKPOINT_SUFFIXES,
    first_line,
    hub_problem,
    hub_unreachable,
    looks_local,
    not_a_source,
)
from .tiny import BUILTIN_MODELS, builtin_folder, rebuild_builtin

__all__ = [
    "LoadedModel",
    "image_to_image",
    "inpainting",
    "load_model",
    "model_profile",
    "pipeline_for",
    "preferred_half",
    "request_pipeline",
    "text_to_image",
]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class LoadedModel:
    """A pipeline on its device, its safety checker held apart, and its profile."""

    pipe: Any
    device: torch.device
    dtype: torch.dtype
    profile: ModelProfile
    checker: Any = None
    feature_extractor: Any = None
    img2img: Any = None  # the image-to-image pipeline on the same modules, made on first use
    #: An edit-only model's text-to-image pipeline on the same modules, made on first use.
    text2img: Any = None
    inpaint: Any = None  # the inpaint pipeline on the same modules, made on first use
    folder: Path | None = None  # its folder or single checkpoint file (for its hash)
    #: Arguments of every stock pipeline call of this model (its recipe: `clip_skip`, ...).
    call_extra: dict[str, Any] = field(default_factory=dict)
    clip_skip: int = 0  # also applied by weighted prompts' own encoding
    offloaded: bool = False  # `offload = "model"`: components wait in CPU memory
    cache: Any = None  # its step cache (`caching.StepCache`), when `cache` is not "off"

    def component_bytes(self) -> dict[str, int]:
        """Bytes each component's weights take (quantized ones as stored)."""
        out = {}
        for name, module in getattr(self.pipe, "components", {}).items():
            if isinstance(module, torch.nn.Module):
                tensors = [*module.parameters(), *module.buffers()]
                out[name] = sum(_stored_bytes(t) for t in tensors)
        return out

    def memory_bytes(self) -> int:
        """Bytes its weights take (what `/models` and the logs report)."""
        return sum(self.component_bytes().values())

    def resident_bytes(self) -> int:
        """Bytes it holds on its device while loaded: all its weights, or with offload its
        largest component (the others wait in CPU memory)."""
        sizes = self.component_bytes()
        return max(sizes.values(), default=0) if self.offloaded else sum(sizes.values())


def _stored_bytes(tensor: torch.Tensor) -> int:
    """A tensor's bytes as stored: a quantized tensor (torchao's subclasses) holds its data
    in inner tensors (int8 or fp8 values, scales), while its `element_size` is the dtype's."""
    flatten = getattr(type(tensor), "__tensor_flatten__", None)
    if flatten is None:
        return tensor.numel() * tensor.element_size()
    names, _ = flatten(tensor)
    return sum(_stored_bytes(getattr(tensor, name)) for name in names)


def image_to_image(model: LoadedModel) -> Any:
    """The model's image-to-image pipeline (its family's), sharing every module with the
    text-to-image one (diffusers' `from_pipe`: no extra memory); `ValueError` for a family
    without one (validation refuses such requests first)."""
    if model.img2img is None:
        import diffusers

        from .families import family_of

        cls = type(model.pipe).__name__
        name = family_of(model.pipe).img2img.get(cls)
        if name is None:
            raise ValueError(f"{cls} models have no image-to-image pipeline")
        model.img2img = getattr(diffusers, name).from_pipe(model.pipe)
        model.img2img.set_progress_bar_config(disable=True)
    return model.img2img


def text_to_image(model: LoadedModel) -> Any:
    """The model's text-to-image pipeline: its own, or for an edit-only pipeline (Qwen-Image-
    Edit) its family's text-to-image one on the same modules (`from_pipe`, made once)."""
    from .families import family_of

    name = family_of(model.pipe).text2image.get(type(model.pipe).__name__)
    if name is None:
        return model.pipe
    if model.text2img is None:
        import diffusers

        model.text2img = getattr(diffusers, name).from_pipe(model.pipe)
        model.text2img.set_progress_bar_config(disable=True)
    return model.text2img


def inpainting(model: LoadedModel) -> Any:
    """The model's inpaint pipeline (its family's), sharing every module with the loaded
    one (`from_pipe`), or the loaded one itself when it only inpaints; `ValueError` for a
    family without one (validation refuses such requests first)."""
    if model.inpaint is None:
        import diffusers

        from .families import family_of

        cls = type(model.pipe).__name__
        name = family_of(model.pipe).inpaint.get(cls)
        if name is None:
            raise ValueError(f"{cls} models have no inpaint pipeline")
        if name == cls:
            model.inpaint = model.pipe
        else:
            model.inpaint = getattr(diffusers, name).from_pipe(model.pipe)
            model.inpaint.set_progress_bar_config(disable=True)
    return model.inpaint


def pipeline_for(model: LoadedModel, request: ImageRequest) -> Any:
    """The pipeline that runs `request` on `model`: inpaint for a mask, its edit pipeline (the
    loaded one) for an edit by instruction, image-to-image for an init image, else
    text-to-image."""
    if request.mask is not None:
        return inpainting(model)
    if request.references:
        return model.pipe
    if request.init_image is not None:
        return image_to_image(model)
    return text_to_image(model)


def request_pipeline(model: LoadedModel, request: ImageRequest) -> Any:
    """A pipeline of one request's own (step scheduling): `pipeline_for` the request, with
    the same modules but its own scheduler and per-call state. A shallow copy: no memory."""
    base = pipeline_for(model, request)
    own = copy.copy(base)
    own.scheduler = type(model.pipe.scheduler).from_config(model.pipe.scheduler.config)
    return own


def preferred_half(spec: ModelSpec, config: EngineConfig) -> str:
    """The half-precision dtype of the model's family ("float16" or "bfloat16"), from the
    `model_index.json` of a builtin or local folder or of a hub snapshot already in the cache,
    or from a single file's weight names; float16 when it cannot be told before loading (a
    first download)."""
    from .budget import cached_snapshot
    from .families import FAMILIES

    try:
        source, _ = _source(spec, config)
        if Path(source).is_file():  # its kind from its weight names, else its base's index
            kind = file_kind(Path(source), based=bool(spec.base.strip()))
            if kind:
                name = SINGLE_FILE[kind].pipeline
                return next((f.half for f in FAMILIES if name in f.pipelines), "float16")
            source = base_of(spec)
        folder = Path(source) if Path(source).is_dir() else cached_snapshot(source, config)
        index = json.loads((folder / "model_index.json").read_text()) if folder else {}
    except (OSError, ValueError):  # the load itself says what is wrong
        return "float16"
    name = index.get("_class_name", "")
    return next((f.half for f in FAMILIES if name in f.pipelines), "float16")


def _source(spec: ModelSpec, config: EngineConfig) -> tuple[str, dict[str, Any]]:
    source = spec.source
    if source in BUILTIN_MODELS:
        return str(builtin_folder(source, config.cache_dir)), {"local_files_only": True}
    if source.startswith("builtin:"):
        raise ValueError(f"unknown builtin model {source!r}; known: {', '.join(BUILTIN_MODELS)}")
    local = Path(source).expanduser()
    extra: dict[str, Any] = {}
    if config.cache_dir is not None:
        extra["cache_dir"] = str(config.cache_dir / "hub")
    if local.is_file():  # its configs may come from the hub: the same cache
        return str(local), extra
    if local.exists():
        return str(local), {"local_files_only": True}
    if local.suffix.lower() in CHECKPOINT_SUFFIXES:
        raise ValueError(f"the checkpoint file {source} does not exist")
    if looks_local(source):
        raise ValueError(f"the model folder {source} does not exist (a hub id looks like org/name)")
    problem = not_a_source(source)
    if problem is not None:
        raise ValueError(problem)
    return source, extra


def _hub_unreachable_for(spec: ModelSpec, config: EngineConfig) -> str | None:
    """Why the hub cannot be reached, when `spec` may need it (a hub id, or a checkpoint file's
    configs) and it cannot: then the cache alone is read, so a cached model loads at once and
    one not cached fails at once, instead of huggingface_hub retrying each file with back-off
    (see `engine.sources`). None when it answers or is not needed."""
    _, kwargs = _source(spec, config)  # a bad source is refused first, without the network
    if kwargs.get("local_files_only"):
        return None
    return hub_unreachable()


def _hub_folder(source: str, config: EngineConfig) -> Path:
    """Where the hub cache keeps `source` (huggingface_hub's `models--org--name`)."""
    from huggingface_hub import constants

    root = (
        config.cache_dir / "hub" if config.cache_dir is not None else Path(constants.HF_HUB_CACHE)
    )
    return root / ("models--" + source.replace("/", "--"))


def _unreadable(spec: ModelSpec, config: EngineConfig, source: str, exc: Exception) -> Exception:
    """The load error, naming its cause: the network, the hub (no such model, gated), the
    files on this disk (which to check or delete)."""
    why = first_line(exc)
    hub = hub_problem(spec.source, exc)
    if hub is not None and not Path(source).exists():
        return ValueError(hub)
    if Path(source).exists():  # a local folder the operator gave
        return ValueError(
            f"the model folder {source} cannot be loaded ({why}): check that it holds a "
            "complete diffusers model (model_index.json and the folders it names)"
        )
    cached = _hub_folder(spec.source, config)
    if cached.exists():
        return ValueError(
            f"{why}. Its downloaded files in {cached} may be damaged or incomplete: delete "
            "that folder to download them again"
        )
    return exc


# --- quantization ------------------------------------------------------------------------------


def _from_pretrained(source: str, dtype: torch.dtype, kwargs: dict[str, Any]) -> Any:
    """The text-to-image pipeline of `source`; the pipeline its model index names when
    diffusers knows no text-to-image one for it (Qwen-Image-Edit, FLUX.1 Fill: `family_of`
    then says whether it is served); a text-to-image pipeline whose denoiser reads a mask
    (an SD inpainting UNet) as its family's inpaint pipeline."""
    import diffusers
    from diffusers import AutoPipelineForText2Image, DiffusionPipeline

    from .families import family_of

    try:
        pipe = AutoPipelineForText2Image.from_pretrained(source, dtype=dtype, **kwargs)
    except ValueError as exc:
        if "AutoPipeline can't find a pipeline" not in str(exc):
            raise
        return DiffusionPipeline.from_pretrained(source, dtype=dtype, **kwargs)
    try:
        reader = family_of(pipe).mask_reader(pipe)
    except ValueError:  # not served: `_profile` names it
        return pipe
    return pipe if reader is None else getattr(diffusers, reader).from_pipe(pipe)


def _load_pipeline(
    spec: ModelSpec,
    config: EngineConfig,
    dtype: torch.dtype,
    quantization: Any = None,
    hub_why: str | None = None,
) -> tuple[Any, Path | None]:
    """The pipeline and the files it came from (its folder, or its single checkpoint file); a
    damaged builtin model is rebuilt, other models' files are named. `quantization`: the
    denoiser's quantization config (`quantization_config`), or None. `hub_why`: why the hub
    cannot be reached (`_hub_unreachable_for`), or None."""
    source, kwargs = _source(spec, config)
    if hub_why is not None:  # the hub cannot be reached: the cache alone, at once
        kwargs = {**kwargs, "local_files_only": True}
    if Path(source).is_file():
        pipe = from_single_file(Path(source), dtype, kwargs, base_of(spec), quantization)
        return pipe, Path(source)
    if quantization is not None:
        kwargs = {
            **kwargs,
            "quantization_config": pipeline_quantization(source, quantization, kwargs),
        }
    try:
        pipe = _from_pretrained(source, dtype, kwargs)
    except Exception as exc:
        if spec.source not in BUILTIN_MODELS:
            raise _unreadable(spec, config, source, exc) from exc
        log.warning(
            "the cached %s in %s cannot be loaded (%s): building it again",
            spec.source,
            source,
            first_line(exc),
        )
        rebuilt = rebuild_builtin(spec.source, config.cache_dir)
        pipe = _from_pretrained(str(rebuilt), dtype, kwargs)
    name = getattr(pipe.config, "_name_or_path", "")
    return pipe, Path(name) if name and Path(name).is_dir() else None


# --- single checkpoint files -----------------------------------------------------------------


def load_model(config: EngineConfig, spec: ModelSpec | None = None) -> LoadedModel:
    """Load `spec` (default: the config's default model) with diffusers' AutoPipeline;
    raises with a readable message."""
    from diffusers.utils import logging as dlogging
    from transformers.utils import logging as tlogging

    spec = spec or config.model_spec(config.default_model_name)
    if not sys.stderr.isatty():  # a terminal sees the (first, multi-GB) download's progress
        from huggingface_hub.utils import disable_progress_bars

        dlogging.disable_progress_bar()
        tlogging.disable_progress_bar()
        disable_progress_bars()
    device = pick_device(config.device)
    dtype = pick_dtype(config.dtype, device, preferred_half(spec, config))
    quantization = quantization_config(spec.quantize, device, dtype)
    if spec.offload == "model" and device.type == "cpu":
        raise ValueError(
            'offload = "model" needs a GPU: on the CPU every component is in its memory already'
        )
    how = "" if spec.quantize == "none" else f", its denoiser in {spec.quantize}"
    hub_why = _hub_unreachable_for(spec, config)
    if hub_why is not None:
        how += f"; the Hugging Face hub cannot be reached ({hub_why}): from the local cache"
    log.info("loading %s on %s (%s%s)", spec.source, device, dtype, how)
    pipe, files = _load_pipeline(spec, config, dtype, quantization, hub_why)

    pipe.scheduler = scheduler_for(spec, pipe)

    # The checker is run by the runner itself, so flagged images are reported instead of
    # silently blacked out; the operator's policy decides what users see.
    checker = getattr(pipe, "safety_checker", None)
    extractor = getattr(pipe, "feature_extractor", None)
    if checker is not None:
        pipe.safety_checker = None
        if not config.safety_checker:
            checker = None
    elif config.safety_checker and files is not None and files.is_file():
        log.warning(
            "model %s: a single checkpoint file brings no safety checker; its images are "
            "not checked",
            spec.name,
        )
    if checker is not None:
        checker.to(device)
    if spec.offload == "model":  # each component moves to the device when it runs
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    profile = model_profile(
        spec, pipe, has_checker=checker is not None, files_hash=model_hash(files, config.cache_dir)
    )
    step_cache = None
    if spec.cache != "off":
        from .caching import install
        from .families import family_of

        step_cache = install(spec, pipe, family_of(pipe))
    return LoadedModel(
        pipe=pipe,
        device=device,
        dtype=dtype,
        profile=profile,
        checker=checker,
        feature_extractor=extractor if checker is not None else None,
        folder=files,
        call_extra=call_extra(spec, profile.family),
        clip_skip=spec.clip_skip,
        offloaded=spec.offload == "model",
        cache=step_cache,
    )


# --- memory ------------------------------------------------------------------------------------


def model_profile(
    spec: ModelSpec, pipe: Any, *, has_checker: bool = False, files_hash: str = ""
) -> ModelProfile:
    """What `spec`'s loaded `pipe` considers normal (its family's defaults, the spec's own
    settings over them) and can do (image-to-image, edits)."""
    from .families import family_of

    cls = type(pipe).__name__
    family = family_of(pipe)
    defaults = family.defaults(pipe, spec.source)
    tokenizer = getattr(pipe, "tokenizer", None)
    max_len = getattr(tokenizer, "model_max_length", 77)
    native = spec.size or defaults.native_size
    sizes, area, multiple = family.reference_fit(pipe, native)
    return ModelProfile(
        name=spec.name,
        family=family.name,
        family_label=family.label,
        native_size=native,
        default_steps=spec.steps or defaults.steps,
        default_guidance=spec.guidance if spec.guidance >= 0 else defaults.guidance,
        sampler=sampler_name(pipe.scheduler),
        max_tokens=max(1, min(int(max_len), 1024) - 2),
        has_safety_checker=has_checker,
        extra={"pipeline": cls, "device": str(pipe.device), "source": spec.source},
        hash=files_hash,
        description=spec.description,
        multiple=defaults.multiple,
        negative_prompt=family.negative_prompt,
        weighted=family.weighted,
        img2img=cls in family.img2img,
        max_references=family.edits.get(cls, 0),
        reference_sizes=sizes,
        reference_area=area,
        reference_multiple=multiple,
        cache=spec.cache,
        cache_all=spec.cache_for == "all",
        inpaint=cls in family.inpaint,
        inpaint_only=family.inpaint.get(cls) == cls,
        inpaint_crop=_takes(family.inpaint.get(cls), "padding_mask_crop"),
    )


def _takes(cls: str | None, argument: str) -> bool:
    """Whether diffusers' pipeline class `cls` takes `argument` in its call."""
    import inspect

    import diffusers

    if cls is None:
        return False
    return argument in inspect.signature(getattr(diffusers, cls).__call__).parameters
