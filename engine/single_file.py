"""Single checkpoint files as model sources: a whole SD/SDXL checkpoint (civitai, A1111),
or a diffusion transformer's file (FLUX.1, Chroma, SD3/3.5, Z-Image...) with its reference
repository's other components; read safely (`.ckpt` with torch's weights-only unpickler) and
refused in one line when they cannot be served.

Runs on the engine's worker thread only (torch).
"""

from __future__ import annotations

import json
import logging
import re
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import ModelSpec
from .sources import CHECKPOINT_SUFFIXES, first_line, hub_problem, looks_local

__all__ = [
    "SINGLE_FILE",
    "FileKind",
    "base_of",
    "file_kind",
    "from_single_file",
    "reference_repo",
]


log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FileKind:
    """A kind of single file: the pipeline it makes and what operators call it. A whole
    pipeline in one file (SD's: UNet, VAE and text encoders) is converted by the pipeline's
    own `from_single_file`; a diffusion transformer's file holds the denoiser alone, and the
    other components come from a reference repository (`[models.<name>] base`, else the
    kind's own, `reference_repo`): any repository whose denoiser is the file's `transformer`
    class (a FLUX.1 file with FLUX.1 Kontext's, a Qwen-Image file with Qwen-Image-Edit's)."""

    pipeline: str
    label: str
    whole: bool = False
    transformer: str = ""


#: The single files served, by diffusers' model type (`infer_diffusers_model_type`'s names).
#: A new family's transformer files: one line here (its pipeline must be in `families`).
SINGLE_FILE = {
    "v1": FileKind("StableDiffusionPipeline", "SD 1.x", whole=True),
    "v2": FileKind("StableDiffusionPipeline", "SD 2.x", whole=True),
    "xl_base": FileKind("StableDiffusionXLPipeline", "SDXL", whole=True),
    "flux-schnell": FileKind(
        "FluxPipeline", "FLUX.1-schnell", transformer="FluxTransformer2DModel"
    ),
    "flux-dev": FileKind("FluxPipeline", "FLUX.1-dev", transformer="FluxTransformer2DModel"),
    "chroma": FileKind("ChromaPipeline", "Chroma", transformer="ChromaTransformer2DModel"),
    "sd3": FileKind("StableDiffusion3Pipeline", "SD3", transformer="SD3Transformer2DModel"),
    "sd35_medium": FileKind(
        "StableDiffusion3Pipeline", "SD3.5 Medium", transformer="SD3Transformer2DModel"
    ),
    "sd35_large": FileKind(
        "StableDiffusion3Pipeline", "SD3.5 Large", transformer="SD3Transformer2DModel"
    ),
    "z-image-turbo": FileKind("ZImagePipeline", "Z-Image", transformer="ZImageTransformer2DModel"),
    "qwen-image": FileKind(
        "QwenImagePipeline", "Qwen-Image", transformer="QwenImageTransformer2DModel"
    ),
    "flux-2-klein-4b": FileKind(
        "Flux2KleinPipeline", "FLUX.2 [klein] 4B", transformer="Flux2Transformer2DModel"
    ),
    "flux-2-klein-9b": FileKind(
        "Flux2KleinPipeline", "FLUX.2 [klein] 9B", transformer="Flux2Transformer2DModel"
    ),
}

#: The reference repositories of the kinds diffusers names none for (it takes every FLUX.2
#: file for [dev], and knows only Qwen-Image 2.1's files).
_REFERENCE = {
    "qwen-image": "Qwen/Qwen-Image",
    "flux-2-klein-4b": "black-forest-labs/FLUX.2-klein-4B",
    "flux-2-klein-9b": "black-forest-labs/FLUX.2-klein-9B",
}


#: Weight names only a diffusers-layout transformer file has (a transformer folder's
#: `diffusion_pytorch_model.safetensors` saved as one file), by the kind they mean; the first
#: found wins. `infer_diffusers_model_type` knows the original (BFL, Stability, ComfyUI)
#: layouts only, except Chroma's and Z-Image's, whose markers both layouts share (and SD3's
#: needs the full width); `from_single_file` reads both layouts. SD3's: 3.5 Large's 38 blocks,
#: 3.5 Medium's second attention, and the position table only SD3's patch embedding saves.
_DIFFUSERS_LAYOUT = (
    ("time_text_embed.guidance_embedder.linear_1.weight", "flux-dev"),
    ("single_transformer_blocks.0.proj_mlp.weight", "flux-schnell"),
    ("transformer_blocks.37.norm1_context.linear.weight", "sd35_large"),
    ("transformer_blocks.0.attn2.to_q.weight", "sd35_medium"),
    ("pos_embed.pos_embed", "sd3"),
    ("transformer_blocks.0.img_mod.1.weight", "qwen-image"),
    ("single_stream_modulation.linear.weight", "flux-2-dev"),
)

#: The weights whose first dimension is a FLUX.2 transformer's width (attention heads x 128):
#: [klein] 4B 3072, [klein] 9B 4096, [dev] 6144 (BFL's layout, then diffusers').
_FLUX2_INPUT = ("img_in.weight", "x_embedder.weight")


def _flux2_size(checkpoint: Mapping[str, Any]) -> str:
    """Which FLUX.2 a file holds, told by its width: diffusers takes every FLUX.2 file for
    [dev], and [klein]'s 4B and 9B are the ones served."""
    key = next((k for k in _FLUX2_INPUT if k in checkpoint), None)
    width = int(checkpoint[key].shape[0]) if key is not None else 0
    if not width or width >= 6144:
        return "flux-2-dev"
    return "flux-2-klein-4b" if width <= 3072 else "flux-2-klein-9b"


def reference_repo(kind: str) -> str:
    """The hub repository whose other components serve a file of `kind` without a `base`."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_DEFAULT_PIPELINE_PATHS

    return (
        _REFERENCE.get(kind)
        or DIFFUSERS_DEFAULT_PIPELINE_PATHS[kind]["pretrained_model_name_or_path"]
    )


#: The weight only a whole SD 1.x/2.x/SDXL checkpoint has (its UNet's first layer).
_SD_UNET = "model.diffusion_model.input_blocks.0.0.weight"


def base_of(spec: ModelSpec) -> str:
    """The model's `base`: a hub id, or a folder (relative to the working directory)."""
    base = spec.base.strip()
    if base and (Path(base).expanduser().exists() or looks_local(base)):
        return str(Path(base).expanduser())
    return base


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
    """The file's kind (a key of `SINGLE_FILE`) from its weight names; "" when none is known
    and `based` (its `base` then says); else a one-line ValueError saying what it is."""
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    try:
        kind = infer_diffusers_model_type(checkpoint)
    except Exception:  # a check of some other family read a weight it does not have
        kind = ""
    if kind == "v1" and _SD_UNET not in checkpoint:  # its answer when it knows none
        kind = next((found for key, found in _DIFFUSERS_LAYOUT if key in checkpoint), "")
    if kind == "flux-2-dev":
        kind = _flux2_size(checkpoint)
    if kind and kind not in SINGLE_FILE:
        served = ", ".join(dict.fromkeys(k.label for k in SINGLE_FILE.values()))
        raise ValueError(
            f"{path} is a checkpoint of another kind ({kind}): single files of {served} are "
            "supported (give others as a diffusers folder or hub id)"
        )
    if kind and SINGLE_FILE[kind].whole and _SD_UNET not in checkpoint:
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


def file_kind(path: Path, based: bool) -> str:
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


def from_single_file(
    path: Path, dtype: torch.dtype, kwargs: dict[str, Any], base: str = "", quantization: Any = None
) -> Any:
    """A single file through diffusers' `from_single_file`: a whole SD checkpoint with its
    family's pipeline class, a transformer with its reference repository's other components;
    every problem is one ValueError line naming the file."""
    kind = file_kind(path, bool(base))
    if not kind or not SINGLE_FILE[kind].whole:
        return _transformer_file(path, kind, base, dtype, kwargs, quantization)
    if quantization is not None:  # diffusers converts whole checkpoints unquantized
        raise ValueError(
            f"{path} is a whole {SINGLE_FILE[kind].label} checkpoint, which diffusers loads "
            "unquantized: remove quantize, or give the model as a diffusers folder or hub id"
        )
    import diffusers

    spec = SINGLE_FILE[kind]
    cls = getattr(diffusers, spec.pipeline)
    extra: dict[str, Any] = {}
    if spec.pipeline == "StableDiffusionPipeline":  # none in the file: load_model logs that
        extra["requires_safety_checker"] = False
    if base:
        extra["config"] = base
    log.info("%s is a %s checkpoint: loading it with %s", path, spec.label, spec.pipeline)
    repo = base or reference_repo(kind)
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
            local_files_only=bool(kwargs.get("local_files_only")),
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

    from .families import FAMILIES

    label = SINGLE_FILE[kind].label if kind else "transformer"
    repo = base or reference_repo(kind)
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
    denoiser_name = str(index.get(family.denoiser, [None, ""])[1])
    if kind and SINGLE_FILE[kind].transformer != denoiser_name:
        raise ValueError(
            f"{what} holds a {label} transformer, but its base {repo} is a {class_name} "
            "model: set [models.<name>] base to a repository of its own family"
        )
    denoiser_class = getattr(diffusers, denoiser_name, None)
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
