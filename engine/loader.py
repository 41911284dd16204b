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
from .request import ModelProfile
from .sources import CHECKPOINT_SUFFIXES, first_line, hub_problem, looks_local
from .tiny import BUILTIN_MODELS, builtin_folder, default_cache_dir, rebuild_builtin

__all__ = [
    "LoadedModel",
    "image_to_image",
    "load_model",
    "model_hash",
    "pick_device",
    "pick_dtype",
    "request_pipeline",
    "sampler_name",
    "spec_hash",
]

log = logging.getLogger(__name__)

#: The single-file families served (diffusers' `infer_diffusers_model_type` names), their
#: pipeline class and what operators call them.
_SINGLE_FILE = {
    "v1": ("StableDiffusionPipeline", "SD 1.x"),
    "v2": ("StableDiffusionPipeline", "SD 2.x"),
    "xl_base": ("StableDiffusionXLPipeline", "SDXL"),
}

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

    def memory_bytes(self) -> int:
        """Bytes its weights take on its device (what `/models` and the logs report)."""
        total = 0
        for module in getattr(self.pipe, "components", {}).values():
            if isinstance(module, torch.nn.Module):
                total += sum(t.numel() * t.element_size() for t in module.parameters())
                total += sum(t.numel() * t.element_size() for t in module.buffers())
        return total


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


def _load_pipeline(
    spec: ModelSpec, config: EngineConfig, dtype: torch.dtype
) -> tuple[Any, Path | None]:
    """The pipeline and the files it came from (its folder, or its single checkpoint file); a
    damaged builtin model is rebuilt, other models' files are named."""
    source, kwargs = _source(spec, config)
    if Path(source).is_file():
        return _from_single_file(Path(source), dtype, kwargs), Path(source)
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


def _checkpoint_family(path: Path, checkpoint: Mapping[str, Any]) -> str:
    """The checkpoint's family (a key of `_SINGLE_FILE`), from its weight names, or a
    one-line ValueError saying what it is instead."""
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    try:
        family = infer_diffusers_model_type(checkpoint)
    except Exception:  # a check of some other family read a weight it does not have
        family = ""
    if family and family not in _SINGLE_FILE:
        raise ValueError(
            f"{path} is a checkpoint of another kind ({family}): single files of Stable "
            "Diffusion 1.x, 2.x and SDXL text-to-image models are supported (give others as a "
            "diffusers folder or hub id)"
        )
    if "model.diffusion_model.input_blocks.0.0.weight" not in checkpoint:
        lora = any("lora" in key.lower() for key in checkpoint)
        raise ValueError(
            f"{path} is not a Stable Diffusion checkpoint (it has no UNet weights, "
            "model.diffusion_model.*)"
            + ("; it looks like a LoRA: configure it in a [loras.<name>] table" if lora else "")
        )
    return family


def _from_single_file(path: Path, dtype: torch.dtype, kwargs: dict[str, Any]) -> Any:
    """A single-file checkpoint through diffusers' `from_single_file`, with the pipeline class
    of its family; every problem is one ValueError line naming the file."""
    import diffusers

    suffix = path.suffix.lower()
    if suffix not in CHECKPOINT_SUFFIXES:
        raise ValueError(
            f"{path} is a file but not a checkpoint: a model source is a .safetensors (or "
            ".ckpt) file, a diffusers folder, a hub id or builtin:tiny"
        )
    if suffix == ".ckpt":
        family = _checkpoint_family(path, _pickled_checkpoint(path))
    else:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                family = _checkpoint_family(path, _Tensors(handle))
        except ValueError:
            raise
        except Exception as exc:
            raise _unreadable_file(path, first_line(exc)) from exc
    class_name, label = _SINGLE_FILE[family]
    cls = getattr(diffusers, class_name)
    extra: dict[str, Any] = {}
    if class_name == "StableDiffusionPipeline":  # none in the file: load_model logs that
        extra["requires_safety_checker"] = False
    log.info("%s is a %s checkpoint: loading it with %s", path, label, class_name)
    try:
        return cls.from_single_file(str(path), dtype=dtype, **kwargs, **extra)
    except Exception as exc:
        from diffusers.loaders.single_file_utils import DIFFUSERS_DEFAULT_PIPELINE_PATHS

        repo = DIFFUSERS_DEFAULT_PIPELINE_PATHS[family]["pretrained_model_name_or_path"]
        hub = hub_problem(repo, exc)
        if hub is not None:
            raise ValueError(
                f"the {label} checkpoint {path} needs the small config files of {repo} from "
                f"the Hugging Face hub: {hub}"
            ) from exc
        if "meta tensor" in str(exc):  # diffusers leaves the weights a file lacks unset
            raise ValueError(
                f"the {label} checkpoint {path} is incomplete: some of its weights are "
                "missing; download it again"
            ) from exc
        raise ValueError(
            f"the {label} checkpoint {path} cannot be loaded ({first_line(exc)}): it may be "
            "damaged or cut off; download it again"
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
    log.info("loading %s on %s (%s)", spec.source, device, dtype)
    pipe, files = _load_pipeline(spec, config, dtype)

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
