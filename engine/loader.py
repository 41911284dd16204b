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
import hashlib
import importlib.util
import json
import logging
import os
import re
import sys
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import SCHEDULERS, EngineConfig, ModelSpec
from .memory import Weights, gib, weights_of_files
from .request import ModelProfile
from .sources import CHECKPOINT_SUFFIXES, first_line, hub_problem, looks_local
from .tiny import BUILTIN_MODELS, builtin_folder, default_cache_dir, rebuild_builtin

__all__ = [
    "LoadedModel",
    "check_memory",
    "image_to_image",
    "load_model",
    "memory_budget",
    "model_hash",
    "pick_device",
    "pick_dtype",
    "quantization_config",
    "request_pipeline",
    "resident_estimate",
    "sampler_name",
    "spec_hash",
    "weights_estimate",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _FileKind:
    """A kind of single file: the pipeline it makes and what operators call it. A whole
    pipeline in one file (SD's: UNet, VAE and text encoders) is converted by the pipeline's
    own `from_single_file`; a diffusion transformer's file holds the denoiser alone, and the
    other components come from a reference repository (`[models.<name>] base`, else the one
    diffusers names for the kind in `DIFFUSERS_DEFAULT_PIPELINE_PATHS`)."""

    pipeline: str
    label: str
    whole: bool = False


#: The single files served, by diffusers' model type (`infer_diffusers_model_type`'s names).
#: A new family's transformer files: one line here (its pipeline must be in `families`).
_SINGLE_FILE = {
    "v1": _FileKind("StableDiffusionPipeline", "SD 1.x", whole=True),
    "v2": _FileKind("StableDiffusionPipeline", "SD 2.x", whole=True),
    "xl_base": _FileKind("StableDiffusionXLPipeline", "SDXL", whole=True),
    "flux-schnell": _FileKind("FluxPipeline", "FLUX.1-schnell"),
    "flux-dev": _FileKind("FluxPipeline", "FLUX.1-dev"),
    "chroma": _FileKind("ChromaPipeline", "Chroma"),
}

#: Weight names only a diffusers-layout transformer file has (a transformer folder's
#: `diffusion_pytorch_model.safetensors` saved as one file), by the kind they mean; the first
#: found wins. `infer_diffusers_model_type` knows the original (BFL, ComfyUI) layouts only,
#: except Chroma's, whose marker both layouts share; `from_single_file` reads both layouts.
_DIFFUSERS_LAYOUT = (
    ("time_text_embed.guidance_embedder.linear_1.weight", "flux-dev"),
    ("single_transformer_blocks.0.proj_mlp.weight", "flux-schnell"),
)
#: The weight only a whole SD 1.x/2.x/SDXL checkpoint has (its UNet's first layer).
_SD_UNET = "model.diffusion_model.input_blocks.0.0.weight"

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
    folder: Path | None = None  # its folder or single checkpoint file (for its hash)
    #: Arguments of every stock pipeline call of this model (its recipe: `clip_skip`, ...).
    call_extra: dict[str, Any] = field(default_factory=dict)
    clip_skip: int = 0  # also applied by weighted prompts' own encoding
    offloaded: bool = False  # `offload = "model"`: components wait in CPU memory

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


def request_pipeline(model: LoadedModel, *, image: bool = False) -> Any:
    """A pipeline of one request's own (step scheduling): the model's text-to-image (or
    image-to-image) pipeline with the same modules but its own scheduler and per-call state.
    A shallow copy: no memory."""
    base = image_to_image(model) if image else model.pipe
    own = copy.copy(base)
    own.scheduler = type(model.pipe.scheduler).from_config(model.pipe.scheduler.config)
    return own


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
    return source, extra


def _base(spec: ModelSpec) -> str:
    """The model's `base`: a hub id, or a folder (relative to the working directory)."""
    base = spec.base.strip()
    if base and (Path(base).expanduser().exists() or looks_local(base)):
        return str(Path(base).expanduser())
    return base


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

#: What each `quantize` mode needs installed, and the extra that installs it.
_BACKENDS = {
    "int8": ("torchao", "quantize"),
    "fp8": ("torchao", "quantize"),
    "nf4": ("bitsandbytes", "nf4"),
}


def quantization_config(mode: str, device: torch.device, dtype: torch.dtype) -> Any:
    """diffusers' quantization config of a model's denoiser for `[models.<name>] quantize`
    (None for "none"): int8 weight-only and fp8 (dynamic activations, fp8 matmuls) through
    torchao, nf4 through bitsandbytes. A one-line ValueError when the backend is not installed
    or the device cannot run it."""
    if mode == "none":
        return None
    package, extra = _BACKENDS[mode]
    if importlib.util.find_spec(package) is None:
        raise ValueError(
            f'quantize = "{mode}" needs {package}, which is not installed: '
            f'pip install "imagine-bot[{extra}]"'
        )
    if mode == "fp8":
        capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
        if capability is None or capability < (8, 9):
            raise ValueError(
                f'quantize = "fp8" needs an NVIDIA GPU with fp8 (compute capability 8.9 or '
                f"later: Ada, Hopper, Blackwell), not {_device_name(device)}: use int8 or nf4"
            )
    if mode == "nf4" and device.type != "cuda":
        raise ValueError(
            f'quantize = "nf4" needs an NVIDIA GPU (bitsandbytes), not {_device_name(device)}: '
            "use int8"
        )
    from diffusers import BitsAndBytesConfig, TorchAoConfig

    if mode == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype
        )
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig,
        Int8WeightOnlyConfig,
    )

    if mode == "fp8":
        return TorchAoConfig(Float8DynamicActivationFloat8WeightConfig())
    return TorchAoConfig(Int8WeightOnlyConfig())


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({device})"
    return f"the {device.type.upper()}"


def _pipeline_quantization(source: str, quantization: Any, kwargs: dict[str, Any]) -> Any:
    """A pipeline-level config quantizing only the denoiser of `source`'s family."""
    from diffusers import DiffusionPipeline
    from diffusers.quantizers import PipelineQuantizationConfig

    from .families import FAMILIES

    try:
        class_name = DiffusionPipeline.load_config(source, **kwargs).get("_class_name", "")
    except Exception:  # unreadable: from_pretrained says why, once
        class_name = ""
    family = next((f for f in FAMILIES if class_name in f.pipelines), None)
    names = [family.denoiser] if family else sorted({f.denoiser for f in FAMILIES})
    return PipelineQuantizationConfig(quant_mapping={name: quantization for name in names})


def _from_pretrained(source: str, dtype: torch.dtype, kwargs: dict[str, Any]) -> Any:
    from diffusers import AutoPipelineForText2Image

    return AutoPipelineForText2Image.from_pretrained(source, dtype=dtype, **kwargs)


def _load_pipeline(
    spec: ModelSpec, config: EngineConfig, dtype: torch.dtype, quantization: Any = None
) -> tuple[Any, Path | None]:
    """The pipeline and the files it came from (its folder, or its single checkpoint file); a
    damaged builtin model is rebuilt, other models' files are named. `quantization`: the
    denoiser's quantization config (`quantization_config`), or None."""
    source, kwargs = _source(spec, config)
    if Path(source).is_file():
        pipe = _from_single_file(Path(source), dtype, kwargs, _base(spec), quantization)
        return pipe, Path(source)
    if quantization is not None:
        kwargs = {
            **kwargs,
            "quantization_config": _pipeline_quantization(source, quantization, kwargs),
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


class _Tensors(Mapping[str, Any]):
    """A `.safetensors` file's tensors, each read when asked for: its header names them all,
    and diffusers' family check only looks at the shapes of a few."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle
        self._keys = list(handle.keys())
        self._known = set(self._keys)

    def __getitem__(self, key: str) -> Any:
        if key not in self._known:
            raise KeyError(key)
        return self._handle.get_tensor(key)

    def __contains__(self, key: object) -> bool:
        return key in self._known

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def _unreadable_file(path: Path, why: str) -> ValueError:
    return ValueError(
        f"the checkpoint {path} cannot be read ({why}): it is damaged, cut off or not a "
        "checkpoint; download it again"
    )


def _pickled_checkpoint(path: Path) -> Mapping[str, Any]:
    """A `.ckpt`'s state dict, read with torch's weights-only unpickler: a file that holds
    anything but tensors and plain values (objects whose loading could run code) is refused."""
    version = tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2])
    if version < (2, 6):  # CVE-2025-32434: weights_only could be bypassed before 2.6
        raise ValueError(
            f"{path} is a pickled .ckpt checkpoint, which torch {torch.__version__} cannot load "
            "safely: use the model's .safetensors file, or torch 2.6 or later"
        )
    try:
        data = torch.load(
            path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path)
        )
    except Exception as exc:
        text = str(exc)
        if found := re.search(r"Unsupported global: GLOBAL (\S+)", text):
            raise ValueError(
                f"{path} is refused: besides weights it holds Python objects ({found[1]}) "
                "whose loading could run code; use the model's .safetensors file instead"
            ) from exc
        why = "not a torch file" if "Weights only load failed" in text else None
        raise _unreadable_file(path, why or f"{type(exc).__name__}: {first_line(exc)}") from exc
    while isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a Stable Diffusion checkpoint (it holds no weights)")
    return data


def _checkpoint_kind(path: Path, checkpoint: Mapping[str, Any], *, based: bool) -> str:
    """The file's kind (a key of `_SINGLE_FILE`) from its weight names; "" when none is known
    and `based` (its `base` then says); else a one-line ValueError saying what it is."""
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    try:
        kind = infer_diffusers_model_type(checkpoint)
    except Exception:  # a check of some other family read a weight it does not have
        kind = ""
    if kind == "v1" and _SD_UNET not in checkpoint:  # its answer when it knows none
        kind = next((found for key, found in _DIFFUSERS_LAYOUT if key in checkpoint), "")
    if kind and kind not in _SINGLE_FILE:
        served = ", ".join(dict.fromkeys(k.label for k in _SINGLE_FILE.values()))
        raise ValueError(
            f"{path} is a checkpoint of another kind ({kind}): single files of {served} are "
            "supported (give others as a diffusers folder or hub id)"
        )
    if kind and _SINGLE_FILE[kind].whole and _SD_UNET not in checkpoint:
        raise ValueError(
            f"{path} is not a whole Stable Diffusion checkpoint (it has no UNet weights, "
            "model.diffusion_model.*)"
        )
    if not kind and not based:
        lora = any("lora" in key.lower() for key in checkpoint)
        raise ValueError(
            f"{path} is not a checkpoint of a model family served here (none of its weight "
            "names is known)"
            + (
                "; it looks like a LoRA: configure it in a [loras.<name>] table"
                if lora
                else "; if it is a transformer file, name its family's reference repository "
                "in [models.<name>] base (such as black-forest-labs/FLUX.1-dev)"
            )
        )
    return kind


def _file_kind(path: Path, based: bool) -> str:
    """`_checkpoint_kind` of a `.safetensors` (its header only) or `.ckpt` file."""
    suffix = path.suffix.lower()
    if suffix not in CHECKPOINT_SUFFIXES:
        raise ValueError(
            f"{path} is a file but not a checkpoint: a model source is a .safetensors (or "
            ".ckpt) file, a diffusers folder, a hub id or builtin:tiny"
        )
    if suffix == ".ckpt":
        return _checkpoint_kind(path, _pickled_checkpoint(path), based=based)
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return _checkpoint_kind(path, _Tensors(handle), based=based)
    except ValueError:
        raise
    except Exception as exc:
        raise _unreadable_file(path, first_line(exc)) from exc


def _from_single_file(
    path: Path, dtype: torch.dtype, kwargs: dict[str, Any], base: str = "", quantization: Any = None
) -> Any:
    """A single file through diffusers' `from_single_file`: a whole SD checkpoint with its
    family's pipeline class, a transformer with its reference repository's other components;
    every problem is one ValueError line naming the file."""
    kind = _file_kind(path, bool(base))
    if not kind or not _SINGLE_FILE[kind].whole:
        return _transformer_file(path, kind, base, dtype, kwargs, quantization)
    if quantization is not None:  # diffusers converts whole checkpoints unquantized
        raise ValueError(
            f"{path} is a whole {_SINGLE_FILE[kind].label} checkpoint, which diffusers loads "
            "unquantized: remove quantize, or give the model as a diffusers folder or hub id"
        )
    import diffusers
    from diffusers.loaders.single_file_utils import DIFFUSERS_DEFAULT_PIPELINE_PATHS

    spec = _SINGLE_FILE[kind]
    cls = getattr(diffusers, spec.pipeline)
    extra: dict[str, Any] = {}
    if spec.pipeline == "StableDiffusionPipeline":  # none in the file: load_model logs that
        extra["requires_safety_checker"] = False
    if base:
        extra["config"] = base
    log.info("%s is a %s checkpoint: loading it with %s", path, spec.label, spec.pipeline)
    repo = base or DIFFUSERS_DEFAULT_PIPELINE_PATHS[kind]["pretrained_model_name_or_path"]
    try:
        return cls.from_single_file(str(path), dtype=dtype, **kwargs, **extra)
    except Exception as exc:
        hub = hub_problem(repo, exc)
        if hub is not None:
            raise ValueError(
                f"the {spec.label} checkpoint {path} needs the small config files of {repo} "
                f"from the Hugging Face hub: {hub}"
            ) from exc
        if "meta tensor" in str(exc):  # diffusers leaves the weights a file lacks unset
            raise ValueError(
                f"the {spec.label} checkpoint {path} is incomplete: some of its weights are "
                "missing; download it again"
            ) from exc
        raise ValueError(
            f"the {spec.label} checkpoint {path} cannot be loaded ({first_line(exc)}): it may "
            "be damaged or cut off; download it again"
        ) from exc


def _reference_folder(repo: str, kwargs: dict[str, Any]) -> Path:
    """The reference repository's folder: a local diffusers folder, or its snapshot in the hub
    cache with its model index and configs (a few kB, downloaded once)."""
    local = Path(repo).expanduser()
    if local.is_dir():
        return local
    if looks_local(repo):
        raise ValueError(f"the base folder {repo} does not exist (a hub id looks like org/name)")
    from huggingface_hub import snapshot_download

    # Not `from_single_file(config=repo)`: diffusers reads that config without `cache_dir`.
    return Path(
        snapshot_download(
            repo,
            cache_dir=kwargs.get("cache_dir"),
            allow_patterns=["model_index.json", "*/config.json"],
        )
    )


def _transformer_file(
    path: Path,
    kind: str,
    base: str,
    dtype: torch.dtype,
    kwargs: dict[str, Any],
    quantization: Any = None,
) -> Any:
    """A diffusion transformer's single file as the denoiser of its reference repository's
    pipeline (`base`, else the kind's own); the other components (text encoders, VAE,
    tokenizers, scheduler) are that repository's, downloaded once into the hub cache."""
    import diffusers
    from diffusers.loaders.single_file_utils import DIFFUSERS_DEFAULT_PIPELINE_PATHS

    from .families import FAMILIES

    label = _SINGLE_FILE[kind].label if kind else "transformer"
    repo = base or DIFFUSERS_DEFAULT_PIPELINE_PATHS[kind]["pretrained_model_name_or_path"]
    what = f"the {label} file {path}"
    try:
        folder = _reference_folder(repo, kwargs)
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from exc
    except Exception as exc:
        hub = hub_problem(repo, exc)
        raise ValueError(
            f"{what} needs the other components (text encoders, VAE, configs) of {repo}"
            + (f" from the Hugging Face hub: {hub}" if hub else f": {first_line(exc)}")
        ) from exc
    class_name = str(index.get("_class_name", ""))
    family = next((f for f in FAMILIES if class_name in f.pipelines), None)
    if family is None:
        raise ValueError(f"the base {repo} is a {class_name or 'unknown'} model: not served")
    if kind and _SINGLE_FILE[kind].pipeline != class_name:
        raise ValueError(
            f"{what} holds a {label} transformer, but its base {repo} is a {class_name} "
            "model: set [models.<name>] base to a repository of its own family"
        )
    denoiser_class = getattr(diffusers, str(index.get(family.denoiser, [None, ""])[1]), None)
    if denoiser_class is None or not hasattr(denoiser_class, "from_single_file"):
        raise ValueError(f"diffusers cannot read a {class_name}'s {family.denoiser} from a file")
    log.info(
        "%s is a %s transformer: loading %s with the rest of %s", path, label, class_name, repo
    )
    try:
        denoiser = denoiser_class.from_single_file(
            str(path),
            config=str(folder),
            subfolder=family.denoiser,
            dtype=dtype,
            quantization_config=quantization,
        )
    except Exception as exc:
        raise ValueError(
            f"{what} does not fit the {family.denoiser} of {repo} ({first_line(exc)}): "
            "check [models.<name>] base, or download the file again"
        ) from exc
    try:
        return getattr(diffusers, class_name).from_pretrained(
            repo, dtype=dtype, **{family.denoiser: denoiser}, **kwargs
        )
    except Exception as exc:
        hub = hub_problem(repo, exc)
        raise ValueError(
            f"{what} needs the other components (text encoders, VAE) of {repo}"
            + (
                f" from the Hugging Face hub: {hub}"
                if hub
                else f", which cannot be loaded ({first_line(exc)})"
            )
        ) from exc


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
    quantization = quantization_config(spec.quantize, device, dtype)
    if spec.offload == "model" and device.type == "cpu":
        raise ValueError(
            'offload = "model" needs a GPU: on the CPU every component is in its memory already'
        )
    how = "" if spec.quantize == "none" else f", its denoiser in {spec.quantize}"
    log.info("loading %s on %s (%s%s)", spec.source, device, dtype, how)
    pipe, files = _load_pipeline(spec, config, dtype, quantization)

    pipe.scheduler = _scheduler(spec, pipe)

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
    profile = _profile(
        spec, pipe, has_checker=checker is not None, files_hash=model_hash(files, config.cache_dir)
    )
    return LoadedModel(
        pipe=pipe,
        device=device,
        dtype=dtype,
        profile=profile,
        checker=checker,
        feature_extractor=extractor if checker is not None else None,
        folder=files,
        call_extra=_call_extra(spec, profile.family),
        clip_skip=spec.clip_skip,
        offloaded=spec.offload == "model",
    )


def _call_extra(spec: ModelSpec, family: str) -> dict[str, Any]:
    """The recipe's arguments of the stock SD/SDXL call (`_scheduler` checked the family)."""
    extra: dict[str, Any] = {}
    if spec.clip_skip and family != "sd":  # SD's own clip_skip: the runner's embeddings
        extra["clip_skip"] = spec.clip_skip
    if spec.guidance_rescale:
        extra["guidance_rescale"] = spec.guidance_rescale
    return extra


def _scheduler(spec: ModelSpec, pipe: Any) -> Any:
    """The model's scheduler: its own or the configured one, with the model's recipe
    (prediction type, zero terminal SNR, Karras sigmas); `ValueError` with one line for a
    recipe the model's family or scheduler cannot take."""
    import inspect

    import diffusers

    from .families import family_of

    family = family_of(pipe)
    if spec.recipe and family.name not in ("sd", "sdxl"):
        raise ValueError(
            f"model {spec.name} is a {family.label} model: {', '.join(spec.recipe)} apply to "
            "Stable Diffusion and SDXL models only"
        )
    cls = getattr(diffusers, SCHEDULERS[spec.scheduler]) if SCHEDULERS[spec.scheduler] else None
    cls = cls or type(pipe.scheduler)
    changes: dict[str, Any] = {}
    if spec.prediction != "default":
        changes["prediction_type"] = spec.prediction
    if spec.zero_snr:
        # Zero terminal SNR needs the schedule's last step at t = T (Lin et al. 2023).
        changes |= {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}
    if spec.karras:
        changes["use_karras_sigmas"] = True
    accepted = inspect.signature(cls.__init__).parameters
    refused = [key for key in changes if key not in accepted]
    if refused:
        raise ValueError(
            f"model {spec.name}: the {cls.__name__} scheduler has no {', '.join(refused)}; "
            "choose another [models] scheduler (euler, dpmpp_2m, ...)"
        )
    if cls is type(pipe.scheduler) and not changes:
        return pipe.scheduler
    return cls.from_config(pipe.scheduler.config, **changes)


# --- memory ------------------------------------------------------------------------------------


def _cached_snapshot(repo: str, config: EngineConfig) -> Path | None:
    """The hub cache's snapshot folder of `repo`, when its model index is there."""
    from huggingface_hub import try_to_load_from_cache

    cache = str(config.cache_dir / "hub") if config.cache_dir is not None else None
    found = try_to_load_from_cache(repo, "model_index.json", cache_dir=cache)
    return Path(found).parent if isinstance(found, str) else None


def weights_estimate(spec: ModelSpec, config: EngineConfig) -> Weights | None:
    """The model's weights, from its files on this disk (for a transformer file, with its
    reference repository's when that is here too); None when they are not (a hub model not
    downloaded yet) or cannot be read (loading says why)."""
    from .families import FAMILIES

    denoisers = {f.denoiser for f in FAMILIES}
    try:
        if spec.source in BUILTIN_MODELS:
            return weights_of_files(builtin_folder(spec.source, config.cache_dir))
        local = Path(spec.source).expanduser()
        if local.is_dir():
            return weights_of_files(local, denoisers=denoisers)
        if not local.is_file():
            snapshot = _cached_snapshot(spec.source, config)
            return None if snapshot is None else weights_of_files(snapshot, denoisers=denoisers)
        if local.suffix.lower() != ".safetensors":  # a .ckpt has no header to read
            return None
        base = _base(spec)
        kind = _file_kind(local, bool(base))
        if kind and _SINGLE_FILE[kind].whole:
            return weights_of_files(local)
        if not base:
            from diffusers.loaders.single_file_utils import DIFFUSERS_DEFAULT_PIPELINE_PATHS

            base = DIFFUSERS_DEFAULT_PIPELINE_PATHS[kind]["pretrained_model_name_or_path"]
        folder = Path(base) if Path(base).is_dir() else _cached_snapshot(base, config)
        return weights_of_files(local, base=folder, denoisers=denoisers)
    except Exception as exc:  # unreadable files: the load itself reports them
        log.debug("no memory estimate for model %s: %s", spec.name, first_line(exc))
        return None


def memory_budget(config: EngineConfig) -> tuple[int | None, str]:
    """Bytes the loaded models' weights may take together, and what sets it in words:
    `[engine] max_memory_gb`, else the GPU's memory; (None, "") on a CPU without a bound."""
    gb = config.max_memory_gb
    if gb > 0:
        return int(gb * 2**30), f"[engine] max_memory_gb ({gb:g} GiB)"
    device = pick_device(config.device)
    if device.type != "cuda":
        return None, ""
    total = torch.cuda.get_device_properties(device).total_memory
    return int(total), f"the {gib(total)} of {_device_name(device)}"


def _dtype_name(config: EngineConfig) -> str:
    return str(pick_dtype(config.dtype, pick_device(config.device))).removeprefix("torch.")


def resident_estimate(spec: ModelSpec, config: EngineConfig) -> int | None:
    """Bytes the model is estimated to hold on its device once loaded (its `quantize` and
    `offload` applied), or None when its files are not here to tell."""
    weights = weights_estimate(spec, config)
    if weights is None:
        return None
    return weights.bytes(_dtype_name(config), spec.quantize, spec.offload)


def check_memory(config: EngineConfig) -> dict[str, int]:
    """Each model's estimated bytes on its device (those whose files are here); a one-line
    ValueError naming the first that can never fit the memory budget, and what would help."""
    budget, where = memory_budget(config)
    dtype = _dtype_name(config)
    sizes: dict[str, int] = {}
    for spec in config.model_specs:
        weights = weights_estimate(spec, config)
        if weights is None:
            continue
        size = sizes[spec.name] = weights.bytes(dtype, spec.quantize, spec.offload)
        if budget is None or size <= budget:
            continue
        options = [
            f"quantize = {label} ({gib(weights.bytes(dtype, mode, spec.offload))})"
            for mode, label in (("int8", '"fp8" or "int8"'), ("nf4", '"nf4"'))
            if mode != spec.quantize and weights.bytes(dtype, mode, spec.offload) <= budget
        ]
        if spec.offload == "none" and weights.bytes(dtype, spec.quantize, "model") <= budget:
            offloaded = gib(weights.bytes(dtype, spec.quantize, "model"))
            options.append(f'offload = "model" ({offloaded})')
        quantized = "" if spec.quantize == "none" else f", quantize = {spec.quantize!r}"
        help_ = (
            f": set {' or '.join(options)}" if options else ": no quantize or offload makes it fit"
        )
        raise ValueError(
            f"model {spec.name} needs about {gib(size)} for its weights ({dtype}{quantized}), "
            f"more than {where}{help_}"
        )
    return sizes


def model_hash(files: Path | None, cache_dir: Path | None = None) -> str:
    """A short, stable id of a model's files for the PNG's `Model hash`.

    A single checkpoint file: A1111's and civitai's (AutoV2), the first 10 hex digits of the
    file's SHA-256, so other tools find the model; it is computed once and kept in
    `<cache_dir>/file-hashes.json` by path, size and modification time. A hub snapshot: its
    commit. Another folder: a hash of its file names, sizes and config files (hashing gigabytes
    of weights on every start would take minutes)."""
    if files is None:
        return ""
    if files.is_file():
        return _file_sha256(files, cache_dir or default_cache_dir())[:10]
    if files.parent.name == "snapshots" and len(files.name) >= 10:
        return files.name[:10]
    digest = hashlib.sha256()
    for path in sorted(p for p in files.rglob("*") if p.is_file()):
        relative = path.relative_to(files).as_posix()
        digest.update(f"{relative}:{path.stat().st_size}\n".encode())
        if path.suffix == ".json":
            digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


def spec_hash(spec: ModelSpec, config: EngineConfig) -> str:
    """The `Model hash` a model's images carry, from its files on this disk without loading
    it (as `load_model` hashes them); "" for a hub model, whose images carry none."""
    if spec.source in BUILTIN_MODELS:
        return model_hash(builtin_folder(spec.source, config.cache_dir), config.cache_dir)
    local = Path(spec.source).expanduser()
    return model_hash(local, config.cache_dir) if local.exists() else ""


def _file_sha256(path: Path, cache_dir: Path) -> str:
    """The file's SHA-256 (hex), from the cache while its size and modification time hold."""
    stat = path.stat()
    key, stamp = str(path.resolve()), [stat.st_size, stat.st_mtime_ns]
    index = cache_dir / "file-hashes.json"
    try:
        known = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    entry = known.get(key)
    if isinstance(entry, dict) and entry.get("stamp") == stamp and entry.get("sha256"):
        return str(entry["sha256"])
    log.info("hashing %s (%.1f GB) for its model hash, once", path, stat.st_size / 1e9)
    with path.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    known[key] = {"stamp": stamp, "sha256": digest}
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        partial = index.with_name(f"{index.name}.{os.getpid()}.tmp")
        partial.write_text(json.dumps(known, indent=1), encoding="utf-8")
        partial.replace(index)
    except OSError as exc:  # a read-only cache: hash again next time
        log.warning("cannot keep the hash of %s in %s: %s", path, index, exc)
    return digest


def _profile(spec: ModelSpec, pipe: Any, *, has_checker: bool, files_hash: str) -> ModelProfile:
    from .families import family_of

    cls = type(pipe).__name__
    family = family_of(pipe)
    defaults = family.defaults(pipe, spec.source)
    tokenizer = getattr(pipe, "tokenizer", None)
    max_len = getattr(tokenizer, "model_max_length", 77)
    return ModelProfile(
        name=spec.name,
        family=family.name,
        family_label=family.label,
        native_size=spec.size or defaults.native_size,
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
    )
