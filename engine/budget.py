"""Whether the configured models fit the memory they may use: estimates from their files
(`memory.py`) against `[engine] max_memory_gb` or the GPU's memory.

Runs on the engine's worker thread or in `doctor` (torch).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .config import EngineConfig, ModelSpec
from .devices import device_name, pick_device, pick_dtype
from .memory import DTYPE_BYTES, Weights, gib, parameters_in, weights_of_files
from .single_file import SINGLE_FILE, base_of, file_kind, reference_repo
from .sources import first_line
from .tiny import BUILTIN_MODELS, builtin_folder
from .tiny_caption import CAPTION_MODELS, caption_folder

__all__ = [
    "cached_snapshot",
    "check_memory",
    "dtype_name",
    "memory_budget",
    "reader_estimates",
    "resident_estimate",
    "weights_estimate",
]


log = logging.getLogger(__name__)


def cached_snapshot(repo: str, config: EngineConfig) -> Path | None:
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
            snapshot = cached_snapshot(spec.source, config)
            return None if snapshot is None else weights_of_files(snapshot, denoisers=denoisers)
        if local.suffix.lower() != ".safetensors":  # a .ckpt has no header to read
            return None
        base = base_of(spec)
        kind = file_kind(local, bool(base))
        if kind and SINGLE_FILE[kind].whole:
            return weights_of_files(local)
        base = base or reference_repo(kind)
        folder = Path(base) if Path(base).is_dir() else cached_snapshot(base, config)
        return weights_of_files(local, base=folder, denoisers=denoisers)
    except Exception as exc:  # unreadable files: the load itself reports them
        log.debug("no memory estimate for model %s: %s", spec.name, first_line(exc))
        return None


#: `[describe]`'s models, by key, in words.
READERS = {"model": "describe model", "tagger": "tagger"}


def reader_folder(source: str, config: EngineConfig) -> Path | None:
    """The folder of a describe model or tagger (a builtin, a folder, a hub id), when its
    files are on this disk (nothing is built or downloaded)."""
    if source in CAPTION_MODELS:
        folder = caption_folder(source, config.cache_dir, build=False)
        return folder if (folder / "config.json").is_file() else None
    local = Path(source).expanduser()
    if local.is_dir():
        return local
    from huggingface_hub import try_to_load_from_cache

    cache = str(config.cache_dir / "hub") if config.cache_dir is not None else None
    try:
        found = try_to_load_from_cache(source, "config.json", cache_dir=cache)
    except Exception:  # not a hub id: loading says why
        return None
    return Path(found).parent if isinstance(found, str) else None


def reader_estimates(config: EngineConfig, dtype: str | None = None) -> dict[str, int]:
    """The bytes the describe model and the tagger (`[describe]`'s keys: "model", "tagger")
    are estimated to hold on their device once loaded, at `dtype` (default: the engine's),
    those whose files are here."""
    width = DTYPE_BYTES[dtype or dtype_name(config)]
    sizes: dict[str, int] = {}
    for key in READERS:
        source = getattr(config.describe, key)
        folder = reader_folder(source, config) if source else None
        if folder is not None and (parameters := parameters_in(folder)):
            sizes[key] = parameters * width
    return sizes


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
    return int(total), f"the {gib(total)} of {device_name(device)}"


def dtype_name(config: EngineConfig) -> str:
    return str(pick_dtype(config.dtype, pick_device(config.device))).removeprefix("torch.")


def resident_estimate(spec: ModelSpec, config: EngineConfig) -> int | None:
    """Bytes the model is estimated to hold on its device once loaded (its `quantize` and
    `offload` applied), or None when its files are not here to tell."""
    weights = weights_estimate(spec, config)
    if weights is None:
        return None
    return weights.bytes(dtype_name(config), spec.quantize, spec.offload)


def check_memory(config: EngineConfig) -> dict[str, int]:
    """Each model's estimated bytes on its device (those whose files are here); a one-line
    ValueError naming the first that can never fit the memory budget, and what would help,
    the describe model and the tagger included (they load later, when first asked)."""
    budget, where = memory_budget(config)
    dtype = dtype_name(config)
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
    for key, size in reader_estimates(config).items():
        if budget is not None and size > budget:
            source = getattr(config.describe, key)
            raise ValueError(
                f"the {READERS[key]} {source} needs about {gib(size)} for its weights "
                f"({dtype}), more than {where}: pick a smaller one, or leave [describe] {key} "
                "empty"
            )
    return sizes
