"""Named LoRAs, loaded with diffusers' own LoRA support (peft backend) and switched per call.

Operators name LoRAs in `[loras.<name>]`; a prompt's `<lora:name:0.8>` asks for one. Each
model's pipeline loads every LoRA that fits it once, as a peft adapter called `name`, through
the LoRA loader diffusers has for its family (`load_lora_weights` of the pipeline: SD's and
SDXL's for the UNet and CLIP, FLUX.1's for the transformer and CLIP, Chroma's, and so on for
every pipeline diffusers gives one; it also converts the kohya/BFL/A1111 layouts of
downloaded LoRAs), and they stay loaded: before each pipeline call (or denoiser forward of a
step batch) `LoraState.activate` makes exactly that call's set active (`set_adapters` with its
weights, or `disable_lora` for none). Nothing here depends on the family: a pipeline with
`load_lora_weights` takes LoRAs, one without is refused with one line. Nothing is fused into
the base weights, so "none" is the base model bit for bit and switching never accumulates
rounding.

What diffusers 0.42.1 does, and what callers must know:

- The active set is state of the modules, not of a call: one denoiser forward runs one LoRA set
  for every row, so batches (and step-mode ticks) must be keyed by their `LoraSet`.
- The modules are shared by every pipeline made with `from_pipe` (image-to-image): keep one
  `LoraState` per loaded model, not per pipeline object.
- `set_adapters` on the pipeline also switches the text encoder(s). A LoRA with text-encoder
  weights changes the prompt embeddings, so a request's set must be active when its prompt is
  encoded too, and any cache of prompt embeddings must be keyed by the set. UNet-only LoRAs
  leave the text encoder untouched (it has no adapter layers).
- A UNet-only or transformer-only LoRA logs that no key matched the text encoder: harmless.
- `set_adapters` does not undo `disable_lora`; `enable_lora` must follow it. Each of them
  walks every module in Python (about 25 ms for an SD 1.5-shaped UNet holding two LoRAs on a
  slow 2-core CPU, whatever the GPU), hence the skip when the set is unchanged.
- Under `torch.compile` every distinct set *and weight* is a recompile (peft keeps each
  weight as a Python float that dynamo guards on).
- `pipeline(..., cross_attention_kwargs={"scale": s})` multiplies the active weights again:
  do not pass it.

Torch-free: it only calls the pipeline's methods, so the front end may import it for
`LoraSpec`, `LoraSet` and `lora_set`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .config import LoraSpec
from .lora_tags import LoraSet

__all__ = [
    "LoraSet",
    "LoraSpec",
    "LoraState",
    "load_loras",
    "lora_set",
    "resolve_source",
]


def lora_set(weights: Iterable[tuple[str, float]]) -> LoraSet:
    """The canonical set for `weights`: sorted by name, weights as floats, zero weights dropped
    (they change nothing), so equal sets compare equal as batch keys."""
    found: dict[str, float] = {}
    for name, weight in weights:
        if name in found:
            raise ValueError(f"LoRA {name} is named twice")
        found[name] = float(weight)
    return tuple(sorted((name, weight) for name, weight in found.items() if weight != 0.0))


def _is_hub_id(source: str) -> bool:
    """`org/repo`, or `org/repo/.../file.safetensors`: the shapes a hub id can take here."""
    parts = source.split("/")
    if source.endswith(".safetensors"):
        return len(parts) >= 3 and all(parts)
    return len(parts) == 2 and all(parts)


def _resolve(source: str, cache_dir: Path | None) -> tuple[str, dict[str, str], bool]:
    """`resolve_source`, and whether the source is local (a missing one is reported as such)."""
    path = Path(source).expanduser()
    local = path.exists() or path.is_absolute() or source.startswith((".", "~"))
    if local or not _is_hub_id(source):
        return str(path), {}, True
    parts = source.split("/")
    options: dict[str, str] = {}
    if cache_dir is not None:
        options["cache_dir"] = str(cache_dir / "hub")
    if source.endswith(".safetensors"):
        options["weight_name"] = parts[-1]
        if len(parts) > 3:
            options["subfolder"] = "/".join(parts[2:-1])
    return "/".join(parts[:2]), options, False


def resolve_source(source: str, cache_dir: Path | None = None) -> tuple[str, dict[str, str]]:
    """Where `load_lora_weights` reads a LoRA from: a path or repo id, and its keyword options.

    A source that exists on disk, is absolute, or starts with `.` or `~` is a local file (or a
    folder holding one `.safetensors`). Otherwise it is a hub id: `org/repo` (diffusers picks
    the repo's LoRA file, asking the hub which) or `org/repo/[folder/]file.safetensors`. Hub
    files are cached under `cache_dir/hub`, beside the models. Anything else is taken as a
    local path (and then reported missing). Relative paths are relative to the working
    directory: the config reader should resolve them against the config file first.
    """
    where, options, _ = _resolve(source, cache_dir)
    return where, options


def _cause(exc: BaseException) -> str:
    """One line saying why: the first line, with the detail a trailing colon announces."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    mismatch = next((line for line in lines if line.startswith("size mismatch")), None)
    if mismatch is not None:  # torch's load_state_dict lists them all under a header
        return f"its layer shapes do not fit this model ({mismatch.rstrip('.')})"
    first = lines[0]
    if "ignore_mismatched_sizes" in first:  # transformers logs the details, raises this
        return "its layer shapes do not fit this model's text encoder"
    if first.endswith(":") and len(lines) > 1:
        first = f"{first} {lines[1]}"
    return first


def _loaded(pipe: Any) -> set[str]:
    """Adapter names loaded into any of the pipeline's LoRA-capable components."""
    listed = getattr(pipe, "get_list_adapters", None)
    if listed is None:
        return set()
    return {name for names in listed().values() for name in names}


def _denoiser(pipe: Any) -> str:
    """What the family calls the module LoRAs mostly adapt, for messages."""
    return "UNet" if getattr(pipe, "unet", None) is not None else "transformer"


def _load_one(pipe: Any, spec: LoraSpec, cache_dir: Path | None) -> None:
    """Load one LoRA, or raise and leave no part of it behind (the pipeline stays usable)."""
    if not spec.name or "." in spec.name:  # peft keeps adapters in ModuleDicts
        raise ValueError("a LoRA name must be non-empty and hold no '.'")
    if not hasattr(pipe, "load_lora_weights"):
        raise ValueError(f"diffusers has no LoRA support for {type(pipe).__name__}")
    where, options, local = _resolve(spec.source, cache_dir)
    if local and not Path(where).exists():
        raise ValueError(f"no such file: {where}")  # diffusers would report a bad repo id
    try:
        pipe.load_lora_weights(where, adapter_name=spec.name, **options)
    except Exception:
        if spec.name in _loaded(pipe):  # loaded into the denoiser but not the text encoder
            pipe.delete_adapters([spec.name])
        raise
    if spec.name not in _loaded(pipe):
        # e.g. a LoRA for another architecture: diffusers only logs that no key matched.
        raise ValueError(
            f"none of its weights belong to this model's {_denoiser(pipe)} or text encoder "
            "(a LoRA for another model family?)"
        )


def load_loras(
    pipe: Any, specs: Sequence[LoraSpec], *, model_name: str, cache_dir: Path | None = None
) -> None:
    """Load every spec that fits `model_name` into `pipe` as adapter `spec.name`, once.

    They are left inactive (the base model's output is unchanged) until `LoraState.activate`.
    A LoRA that cannot load raises ValueError with one line naming it and the model; the
    LoRAs loaded before it stay loaded (and inactive), the failed one leaves nothing behind.
    """
    seen: set[str] = set()
    loaded = False
    try:
        for spec in specs:
            if not spec.fits(model_name):
                continue
            try:
                if spec.name in seen:
                    raise ValueError("it is configured twice")
                seen.add(spec.name)
                _load_one(pipe, spec, cache_dir)
                loaded = True
            except Exception as exc:
                raise ValueError(
                    f"LoRA {spec.name} cannot load into model {model_name}: {_cause(exc)}"
                ) from exc
    finally:
        if loaded:
            pipe.disable_lora()  # diffusers activates each adapter as it loads


class LoraState:
    """What is active on one model's modules, so that an unchanged set costs nothing.

    Use from the thread that owns the pipeline, and keep one per loaded model: pipelines made
    with `from_pipe` share the modules, hence the active set.
    """

    def __init__(self, pipe: Any) -> None:
        self._pipe = pipe
        self._active: LoraSet | None = None  # unknown: the first activate always applies
        self._enabled = False  # after load_loras, the adapter layers are disabled

    @property
    def active(self) -> LoraSet | None:
        """The set last activated (`None` before the first, or after a failed switch)."""
        return self._active

    def forget(self) -> None:
        """Assume nothing about the modules again: call after `load_loras` on a pipeline in use
        (loading disables every adapter behind this object's back)."""
        self._active = None
        self._enabled = False

    def activate(self, loras: LoraSet) -> None:
        """Make exactly `loras` active with their weights (`()`: none), unless it already is."""
        loras = tuple(sorted(loras))
        if loras == self._active:
            return
        self._active = None  # until the switch has finished
        if not loras:
            self._pipe.disable_lora()
            self._enabled = False
            self._active = loras
            return
        names = [name for name, _ in loras]
        if len(set(names)) != len(names):
            raise ValueError(f"a LoRA is named twice in {names}")
        missing = sorted(set(names) - _loaded(self._pipe))
        if missing:
            raise ValueError(f"LoRA {', '.join(missing)} is not loaded into this model")
        self._pipe.set_adapters(names, adapter_weights=[float(w) for _, w in loras])
        if not self._enabled:  # set_adapters leaves disabled layers disabled
            self._pipe.enable_lora()
            self._enabled = True
        self._active = loras
