"""Loading a diffusers text-to-image pipeline: device, dtype, scheduler, and what it expects.

Runs on the engine's worker thread only (it imports torch and diffusers).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import SCHEDULERS, EngineConfig
from .request import ModelProfile
from .tiny import BUILTIN_MODELS, builtin_folder

__all__ = ["LoadedModel", "load_model", "pick_device", "pick_dtype", "sampler_name"]

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


def _source(config: EngineConfig) -> tuple[str, dict[str, Any]]:
    if config.model in BUILTIN_MODELS:
        return str(builtin_folder(config.model, config.cache_dir)), {"local_files_only": True}
    if config.model.startswith("builtin:"):
        raise ValueError(
            f"unknown builtin model {config.model!r}; known: {', '.join(BUILTIN_MODELS)}"
        )
    if Path(config.model).expanduser().exists():
        return str(Path(config.model).expanduser()), {"local_files_only": True}
    extra: dict[str, Any] = {}
    if config.cache_dir is not None:
        extra["cache_dir"] = str(config.cache_dir / "hub")
    return config.model, extra


def load_model(config: EngineConfig) -> LoadedModel:
    """Load `config.model` with diffusers' AutoPipeline; raises with a readable message."""
    from diffusers import AutoPipelineForText2Image
    from diffusers.utils import logging as dlogging
    from transformers.utils import logging as tlogging

    dlogging.disable_progress_bar()
    tlogging.disable_progress_bar()
    device = pick_device(config.device)
    dtype = pick_dtype(config.dtype, device)
    source, kwargs = _source(config)
    log.info("loading %s on %s (%s)", config.model, device, dtype)
    pipe = AutoPipelineForText2Image.from_pretrained(source, dtype=dtype, **kwargs)

    if SCHEDULERS[config.scheduler]:
        import diffusers

        cls = getattr(diffusers, SCHEDULERS[config.scheduler])
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
    return LoadedModel(
        pipe=pipe,
        device=device,
        dtype=dtype,
        profile=_profile(config, pipe, has_checker=checker is not None),
        checker=checker,
        feature_extractor=extractor if checker is not None else None,
    )


def _profile(config: EngineConfig, pipe: Any, *, has_checker: bool) -> ModelProfile:
    cls = type(pipe).__name__
    family = "sdxl" if "XL" in cls else "sd" if cls.startswith("StableDiffusion") else "other"
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    sample = getattr(getattr(denoiser, "config", None), "sample_size", None)
    scale = getattr(pipe, "vae_scale_factor", 8)
    native = int(sample * scale) if isinstance(sample, int) else (1024 if family == "sdxl" else 512)
    turbo = "turbo" in config.model.lower() or "lightning" in config.model.lower()
    if config.model in BUILTIN_MODELS:
        steps, guidance = 4, 7.0
    elif turbo:
        steps, guidance = 1, 0.0
    elif family == "sdxl":
        steps, guidance = 30, 6.0
    else:
        steps, guidance = 25, 7.0
    tokenizer = getattr(pipe, "tokenizer", None)
    max_len = getattr(tokenizer, "model_max_length", 77)
    return ModelProfile(
        name=config.model,
        family=family,
        native_size=config.default_size or native,
        default_steps=config.default_steps or steps,
        default_guidance=config.default_guidance if config.default_guidance >= 0 else guidance,
        sampler=sampler_name(pipe.scheduler),
        max_tokens=max(1, min(int(max_len), 1024) - 2),
        has_safety_checker=has_checker,
        extra={"pipeline": cls, "device": str(pipe.device)},
    )
