"""Loading a diffusers text-to-image pipeline: device, dtype, scheduler, and what it expects.

Runs on the engine's worker thread only (it imports torch and diffusers).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import SCHEDULERS, EngineConfig, ModelSpec
from .request import ModelProfile
from .sources import first_line, hub_problem, looks_local
from .tiny import BUILTIN_MODELS, builtin_folder, rebuild_builtin

__all__ = [
    "LoadedModel",
    "image_to_image",
    "load_model",
    "model_hash",
    "pick_device",
    "pick_dtype",
    "sampler_name",
]

log = logging.getLogger(__name__)

_SAMPLERS = {
    "DDIMScheduler": "DDIM",
    "EulerDiscreteScheduler": "Euler",
    "EulerAncestralDiscreteScheduler": "Euler a",
    "DPMSolverMultistepScheduler": "DPM++ 2M",
    "PNDMScheduler": "PLMS",
    "LMSDiscreteScheduler": "LMS",
    "HeunDiscreteScheduler": "Heun",
    "UniPCMultistepScheduler": "UniPC",
    "LCMScheduler": "LCM",
}


def sampler_name(scheduler: object) -> str:
    """The name SD tools use for a diffusers scheduler (class name when unknown)."""
    name = type(scheduler).__name__
    return _SAMPLERS.get(name, name)


def pick_device(wanted: str) -> torch.device:
    """`auto` takes CUDA, then Apple's MPS, then the CPU."""
    if wanted != "auto":
        return torch.device(wanted)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(wanted: str, device: torch.device) -> torch.dtype:
    """fp16 on GPUs (half the memory, tensor cores), fp32 on the CPU where fp16 is slow."""
    if wanted != "auto":
        return getattr(torch, wanted)
    return torch.float16 if device.type in {"cuda", "mps"} else torch.float32


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
    folder: Path | None = None  # the files it was loaded from (for its hash)

    def memory_bytes(self) -> int:
        """Bytes its weights take on its device (what `/models` and the logs report)."""
        total = 0
        for module in getattr(self.pipe, "components", {}).values():
            if isinstance(module, torch.nn.Module):
                total += sum(t.numel() * t.element_size() for t in module.parameters())
                total += sum(t.numel() * t.element_size() for t in module.buffers())
        return total


def image_to_image(model: LoadedModel, scheduler: Any = None) -> Any:
    """The model's image-to-image pipeline, sharing every module with the text-to-image one
    (diffusers' `from_pipe`: no extra memory), with `scheduler` (default: the model's).

    The engine's one worker thread owns both pipelines, so swapping the scheduler per call is
    safe; the step loop passes each request's own scheduler copy.
    """
    if model.img2img is None:
        from diffusers import AutoPipelineForImage2Image

        model.img2img = AutoPipelineForImage2Image.from_pipe(model.pipe)
        model.img2img.set_progress_bar_config(disable=True)
    model.img2img.scheduler = scheduler if scheduler is not None else model.pipe.scheduler
    return model.img2img


def _source(spec: ModelSpec, config: EngineConfig) -> tuple[str, dict[str, Any]]:
    source = spec.source
    if source in BUILTIN_MODELS:
        return str(builtin_folder(source, config.cache_dir)), {"local_files_only": True}
    if source.startswith("builtin:"):
        raise ValueError(f"unknown builtin model {source!r}; known: {', '.join(BUILTIN_MODELS)}")
    local = Path(source).expanduser()
    if local.is_file():
        raise ValueError(
            f"{source} is a single checkpoint file; give a diffusers folder instead (convert "
            "it once with diffusers' scripts/convert_original_stable_diffusion_to_diffusers.py "
            "--checkpoint_path FILE --dump_path FOLDER --from_safetensors)"
        )
    if local.exists():
        return str(local), {"local_files_only": True}
    if looks_local(source):
        raise ValueError(f"the model folder {source} does not exist (a hub id looks like org/name)")
    extra: dict[str, Any] = {}
    if config.cache_dir is not None:
        extra["cache_dir"] = str(config.cache_dir / "hub")
    return source, extra


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


def _from_pretrained(source: str, dtype: torch.dtype, kwargs: dict[str, Any]) -> Any:
    from diffusers import AutoPipelineForText2Image

    return AutoPipelineForText2Image.from_pretrained(source, dtype=dtype, **kwargs)


def _load_pipeline(spec: ModelSpec, config: EngineConfig, dtype: torch.dtype) -> Any:
    """The pipeline; a damaged builtin model is rebuilt, other models' files are named."""
    source, kwargs = _source(spec, config)
    try:
        return _from_pretrained(source, dtype, kwargs)
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
        return _from_pretrained(str(rebuilt), dtype, kwargs)


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
    dtype = pick_dtype(config.dtype, device)
    log.info("loading %s on %s (%s)", spec.source, device, dtype)
    pipe = _load_pipeline(spec, config, dtype)

    if SCHEDULERS[spec.scheduler]:
        import diffusers

        cls = getattr(diffusers, SCHEDULERS[spec.scheduler])
        pipe.scheduler = cls.from_config(pipe.scheduler.config)

    # The checker is run by the runner itself, so flagged images are reported instead of
    # silently blacked out; the operator's policy decides what users see.
    checker = getattr(pipe, "safety_checker", None)
    extractor = getattr(pipe, "feature_extractor", None)
    if checker is not None:
        pipe.safety_checker = None
        if not config.safety_checker:
            checker = None
    if checker is not None:
        checker.to(device)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    folder = Path(getattr(pipe.config, "_name_or_path", "") or "")
    folder = folder if folder.is_dir() else None
    return LoadedModel(
        pipe=pipe,
        device=device,
        dtype=dtype,
        profile=_profile(spec, pipe, has_checker=checker is not None, folder=folder),
        checker=checker,
        feature_extractor=extractor if checker is not None else None,
        folder=folder,
    )


def model_hash(folder: Path | None) -> str:
    """A short, stable id of a model's files for the PNG's `Model hash`: the hub commit when
    the folder is a hub snapshot, else a hash of its file names, sizes and config files
    (hashing gigabytes of weights on every start would take minutes)."""
    if folder is None:
        return ""
    if folder.parent.name == "snapshots" and len(folder.name) >= 10:
        return folder.name[:10]
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        digest.update(f"{relative}:{path.stat().st_size}\n".encode())
        if path.suffix == ".json":
            digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


def _profile(spec: ModelSpec, pipe: Any, *, has_checker: bool, folder: Path | None) -> ModelProfile:
    cls = type(pipe).__name__
    family = "sdxl" if "XL" in cls else "sd" if cls.startswith("StableDiffusion") else "other"
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    sample = getattr(getattr(denoiser, "config", None), "sample_size", None)
    scale = getattr(pipe, "vae_scale_factor", 8)
    native = int(sample * scale) if isinstance(sample, int) else (1024 if family == "sdxl" else 512)
    few_steps = any(word in spec.source.lower() for word in ("turbo", "lightning", "lcm"))
    if spec.source in BUILTIN_MODELS:
        steps, guidance = 4, 7.0
    elif few_steps:
        steps, guidance = (4, 1.0) if "lightning" in spec.source.lower() else (1, 0.0)
        if "lcm" in spec.source.lower():
            steps, guidance = 4, 1.0
    elif family == "sdxl":
        steps, guidance = 30, 6.0
    else:
        steps, guidance = 25, 7.0
    tokenizer = getattr(pipe, "tokenizer", None)
    max_len = getattr(tokenizer, "model_max_length", 77)
    return ModelProfile(
        name=spec.name,
        family=family,
        native_size=spec.size or native,
        default_steps=spec.steps or steps,
        default_guidance=spec.guidance if spec.guidance >= 0 else guidance,
        sampler=sampler_name(pipe.scheduler),
        max_tokens=max(1, min(int(max_len), 1024) - 2),
        has_safety_checker=has_checker,
        extra={"pipeline": cls, "device": str(pipe.device), "source": spec.source},
        hash=model_hash(folder),
        description=spec.description,
    )
