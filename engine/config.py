"""Engine settings: a frozen dataclass the front end builds from its own config file.

Every setting and its default is declared once, on `EngineConfig`; `Limits` is the part of it
that request validation enforces, derived from it rather than declared again.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, fields
from pathlib import Path

from .errors import InvalidRequest
from .sources import CHECKPOINT_SUFFIXES

__all__ = [
    "CACHE_FOR",
    "CACHE_MODES",
    "COMPILE_MODES",
    "DEFAULT_DESCRIBE_MODEL",
    "DEFAULT_MODEL",
    "OFFLOAD_MODES",
    "PREDICTIONS",
    "QUANTIZE_MODES",
    "SCHEDULERS",
    "DescribeConfig",
    "EngineConfig",
    "Limits",
    "LoraSpec",
    "ModelSpec",
    "model_name_of",
]

DEFAULT_MODEL = "stabilityai/sd-turbo"
#: Florence-2 base (0.23 B parameters, MIT), in transformers' native format.
DEFAULT_DESCRIBE_MODEL = "florence-community/Florence-2-base"

#: Scheduler names accepted in config, mapped to diffusers class names. "default" keeps the
#: model's own scheduler.
SCHEDULERS: dict[str, str] = {
    "default": "",
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
    "pndm": "PNDMScheduler",
    "lms": "LMSDiscreteScheduler",
}


#: `[models.<name>] prediction`: what the UNet predicts ("default": its scheduler config's).
PREDICTIONS = ("default", "epsilon", "v_prediction")
#: `[models.<name>] quantize`: the denoiser's weights in 8 bits (fp8 or int8 through torchao)
#: or 4 bits (nf4 through bitsandbytes), or as loaded (`none`).
QUANTIZE_MODES = ("none", "fp8", "int8", "nf4")
#: `[models.<name>] offload`: `model` keeps each component in CPU memory until it runs
#: (diffusers' `enable_model_cpu_offload`), for a model bigger than the GPU.
OFFLOAD_MODES = ("none", "model")
#: `[models.<name>] cache`: step caching, which reuses the denoiser's deep features between
#: steps (faster, images change slightly): DeepCache for UNets (SD, SDXL), First-Block-Cache
#: for diffusion transformers (FLUX.1...), or off (images unchanged).
CACHE_MODES = ("off", "deepcache", "fbcache")
#: `[models.<name>] cache_for`: the requests that are cached: those that ask (`fast`, the
#: Discord option `quality:fast`), or every request.
CACHE_FOR = ("fast", "all")

#: `[engine] compile`: off, or a `torch.compile` mode for the UNet.
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
#: Model and LoRA names: what users type in `model:` and `<lora:name>`.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _one_of(allowed: tuple[str, ...], value: str) -> str:
    """ "one of a, b, c, not 'x'", with the closest allowed value when there is one."""
    close = difflib.get_close_matches(value, allowed, n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"one of {', '.join(allowed)}, not {value!r}{hint}"


def model_name_of(source: str) -> str:
    """The name the single `[engine] model` is known by: its last path part
    ("stabilityai/sd-turbo" -> "sd-turbo", "builtin:tiny" -> "tiny", a checkpoint file
    "models/dreamshaper_8.safetensors" -> "dreamshaper_8")."""
    tail = source.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1].removeprefix("builtin:")
    for suffix in CHECKPOINT_SUFFIXES:
        if tail.lower().endswith(suffix):
            tail = tail[: -len(suffix)]
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "-", tail).strip("-.") or "model"
    return cleaned[:64]


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One named model (`[models.<name>]`): where it comes from and what is normal for it.

    Zero or negative defaults mean "the model family's own" (few-step models such as SD-Turbo
    get 1 step and guidance 0, which also skips the unconditional half of each UNet call).
    """

    name: str
    source: str
    description: str = ""
    steps: int = 0
    guidance: float = -1.0
    scheduler: str = "default"
    size: int = 0
    # Recipes of SD and SDXL derivatives (Pony, Illustrious, NoobAI...), as their model cards
    # give them: CLIP layers to skip ("clip skip 2"), a v-prediction model's prediction type
    # with its zero-terminal-SNR schedule, Karras sigmas, and the guidance rescale that goes
    # with zero terminal SNR.
    clip_skip: int = 0
    prediction: str = "default"  # "default" (the model's own), "epsilon", "v_prediction"
    zero_snr: bool = False
    karras: bool = False
    guidance_rescale: float = 0.0
    # A transformer file's (or checkpoint's) reference repository: the hub id or diffusers
    # folder its other components and configs come from; empty: found from its weights.
    base: str = ""
    quantize: str = "none"  # QUANTIZE_MODES
    offload: str = "none"  # OFFLOAD_MODES
    # Step caching (CACHE_MODES, CACHE_FOR): DeepCache computes the whole UNet every
    # `cache_interval` steps and only its shallow blocks in between, reusing the deep feature
    # of branch `cache_branch` (0: the shallowest, fastest); First-Block-Cache runs the rest
    # of the transformer only when the first block's output changed by more than
    # `cache_threshold` (relative mean) since the request's last full step.
    cache: str = "off"
    cache_for: str = "fast"
    cache_interval: int = 3
    cache_branch: int = 0
    cache_threshold: float = 0.08

    @property
    def single_file(self) -> bool:
        """Whether the source names one checkpoint file (not a folder or hub id)."""
        return self.source.lower().endswith(CHECKPOINT_SUFFIXES)

    def problems(self) -> list[str]:
        out = []
        if not _NAME.match(self.name):
            out.append(
                f"model name {self.name!r} must be letters, digits, '-', '_' or '.' (up to 64)"
            )
        if not self.source.strip():
            out.append(f"model {self.name}: source must name a hub id, a folder or builtin:tiny")
        if self.scheduler not in SCHEDULERS:
            out.append(
                f"model {self.name}: scheduler must be one of {', '.join(SCHEDULERS)}, "
                f"not {self.scheduler!r}"
            )
        choices = (
            ("quantize", QUANTIZE_MODES),
            ("offload", OFFLOAD_MODES),
            ("cache", CACHE_MODES),
            ("cache_for", CACHE_FOR),
        )
        for key, allowed in choices:
            value = getattr(self, key)
            if value not in allowed:
                out.append(f"model {self.name}: {key} must be {_one_of(allowed, value)}")
        if self.base.strip() and not self.single_file:
            out.append(
                f"model {self.name}: base is for a single-file source (a .safetensors "
                "transformer or checkpoint); a folder or hub id brings its own components"
            )
        if self.size and (self.size < 8 or self.size % 8):
            out.append(f"model {self.name}: size must be a positive multiple of 8")
        if self.steps < 0:
            out.append(f"model {self.name}: steps must be 0 (the model's own) or more")
        if not 0 <= self.clip_skip <= 12:
            out.append(f"model {self.name}: clip_skip must be between 0 and 12")
        if self.prediction not in PREDICTIONS:
            out.append(
                f"model {self.name}: prediction must be one of {', '.join(PREDICTIONS)}, "
                f"not {self.prediction!r}"
            )
        if not 0.0 <= self.guidance_rescale <= 1.0:
            out.append(f"model {self.name}: guidance_rescale must be between 0 and 1")
        if not 1 <= self.cache_interval <= 100:
            out.append(f"model {self.name}: cache_interval must be between 1 and 100")
        if not 0 <= self.cache_branch <= 32:
            out.append(f"model {self.name}: cache_branch must be between 0 and 32")
        if not 0.0 < self.cache_threshold <= 10.0:  # NaN fails too
            out.append(f"model {self.name}: cache_threshold must be over 0 and at most 10")
        return out

    @property
    def recipe(self) -> list[str]:
        """The SD/SDXL recipe keys this model sets (other families cannot take them)."""
        keys = [("clip_skip", self.clip_skip), ("prediction", self.prediction != "default")]
        keys += [("zero_snr", self.zero_snr), ("karras", self.karras)]
        keys += [("guidance_rescale", self.guidance_rescale)]
        return [name for name, value in keys if value]


@dataclass(frozen=True, slots=True)
class LoraSpec:
    """One named LoRA (`[loras.<name>]`): a `.safetensors` file or a hub id
    ("org/repo", or "org/repo/file.safetensors" for one file of a repo), its default weight,
    and the models it fits (empty: every model)."""

    name: str
    source: str
    weight: float = 1.0
    models: tuple[str, ...] = ()

    def fits(self, model: str) -> bool:
        return not self.models or model in self.models

    def problems(self) -> list[str]:
        out = []
        if not _NAME.match(self.name):
            out.append(
                f"LoRA name {self.name!r} must be letters, digits, '-', '_' or '.' (up to 64)"
            )
        if not self.source.strip():
            out.append(f"LoRA {self.name}: source must name a .safetensors file or a hub id")
        if not -10.0 <= self.weight <= 10.0:
            out.append(f"LoRA {self.name}: weight must be between -10 and 10")
        return out


@dataclass(frozen=True, slots=True)
class DescribeConfig:
    """`[describe]`: the image-to-text model that turns a picture into candidate prompts
    (`engine.describe`), and the tagger that turns it into tag-style ones (`engine.tagger`),
    each loaded on first use."""

    model: str = DEFAULT_DESCRIBE_MODEL  # a hub id, a folder, builtin:tiny-florence2; "": off
    # A WD-style tagger (multi-label image classifier): a hub id, a folder, builtin:tiny-tagger;
    # "": no tag-style prompts. `tag_threshold`: the confidence a tag needs to be kept.
    tagger: str = ""
    tag_threshold: float = 0.35

    @property
    def styles(self) -> tuple[str, ...]:
        """The prompt styles offered ("prose", "tags"), the default one first."""
        return tuple(s for s, on in (("prose", self.model), ("tags", self.tagger)) if on)

    def __post_init__(self) -> None:
        if not 0.0 < self.tag_threshold < 1.0:  # NaN fails too
            raise ValueError(f"tag_threshold must be between 0 and 1, not {self.tag_threshold:g}")


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Everything the engine needs to load a model and schedule work.

    `model` is a hub id, a local folder, or `builtin:tiny` (a random-weight pipeline built
    offline, for tests and dry runs).
    """

    model: str = DEFAULT_MODEL
    device: str = "auto"  # auto | cuda | cuda:N | mps | cpu
    dtype: str = "auto"  # auto | float16 | bfloat16 | float32
    scheduler: str = "default"
    safety_checker: bool = True
    cache_dir: Path | None = None  # where builtin models and the hub cache live
    max_batch_size: int = 8  # images per pipeline call
    batch_wait_ms: int = 50  # how long an open batch waits for companions
    max_queue: int = 64  # requests waiting, across all users
    # "batch": whole pipeline calls; "step": requests join and leave between denoising steps
    # (every family served: each request runs its own stock call, one forward per step).
    scheduling: str = "batch"
    max_width: int = 1024
    max_height: int = 1024
    min_size: int = 64
    max_steps: int = 50
    max_count: int = 4
    max_guidance: float = 30.0
    # 75-token text windows a prompt may take (each BREAK starts one). Every window is
    # encoded and attended to at every step for the price of one image: A1111 prompts of
    # 150-300 tokens take 2-4, so 6 leaves room while `a BREAK a BREAK ...` cannot buy 125.
    max_prompt_chunks: int = 6
    default_steps: int = 0  # 0: the model family's own default
    default_guidance: float = -1.0  # < 0: the model family's own default
    default_size: int = 0  # 0: the model family's native size
    # Speed (pays off on a GPU): torch.compile the UNet, with every call padded to a fixed
    # batch size ("bucket", in UNet rows: images x2 with guidance) so it never recompiles
    # after the warm-up; empty buckets: powers of two up to 2 x max_batch_size.
    compile: str = "off"
    compile_buckets: tuple[int, ...] = ()
    compile_backend: str = "inductor"  # torch.compile's backend; "eager" only checks tracing
    channels_last: bool = False  # the UNet's memory format (helps on some GPUs)
    # Several models (`[models.<name>]` in the bot's config); empty: `model` is the only one,
    # named after its last path part. `default_model` names the one a bare request gets.
    models: tuple[ModelSpec, ...] = ()
    default_model: str = ""
    loras: tuple[LoraSpec, ...] = ()
    # "local": this process runs the engine; "ray": Ray Serve replicas do (`[ray]`)
    backend: str = "local"
    max_loaded_models: int = 1  # pipelines kept loaded; the least recently used goes first
    # Memory the loaded models' weights may take together, in GiB (estimated from their
    # files at their dtype and quantization); 0: the GPU's memory (no bound on the CPU).
    max_memory_gb: float = 0.0
    # `[describe]`, a table of its own in the bot's config: the picture-to-prompts model.
    describe: DescribeConfig = DescribeConfig()
    # The canvas's helper models (`vision.py`), loaded on first use: the text-prompted
    # segmentation model of Vary (Region) (`[region] model`: a CLIPSeg hub id or folder) and
    # the GAN upscaler (`[upscale] model`: an ESRGAN-family file; empty: no GAN).
    region_model: str = "CIDAS/clipseg-rd64-refined"
    upscale_model: str = ""
    # The face fix's detector (`[fix] detector`: a transformers object-detection hub id or
    # folder, a face fine-tune of DETR or YOLOS; empty: no face fix) and the score a box
    # needs to count as a face (`[fix] threshold`).
    fix_detector: str = ""
    fix_threshold: float = 0.5
    # The hand fix's detector (`[fix] hands_detector`, the same kind of model fine-tuned on
    # hands; empty: no hand fix), with the same threshold.
    fix_hands_detector: str = ""

    @property
    def fix_detectors(self) -> dict[str, str]:
        """What `/imagine fix:` can fix here ("faces", "hands") and each one's detector."""
        found = {"faces": self.fix_detector, "hands": self.fix_hands_detector}
        return {target: detector for target, detector in found.items() if detector}

    @property
    def model_specs(self) -> tuple[ModelSpec, ...]:
        """Every model this engine serves; the single `model` when none are named."""
        if self.models:
            return self.models
        return (
            ModelSpec(
                name=model_name_of(self.model),
                source=self.model,
                steps=self.default_steps,
                guidance=self.default_guidance,
                scheduler=self.scheduler,
                size=self.default_size,
            ),
        )

    @property
    def default_model_name(self) -> str:
        return self.default_model or self.model_specs[0].name

    @property
    def model_names(self) -> list[str]:
        return [spec.name for spec in self.model_specs]

    def model_spec(self, name: str) -> ModelSpec:
        """The model called `name`; KeyError if there is none."""
        for spec in self.model_specs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def model_named(self, model: str | None) -> str:
        """The configured model a request's `model` means: its name (None: the default), or
        its source, as jobs stored before models had names give it; else `InvalidRequest`."""
        name = model or self.default_model_name
        if name in self.model_names:
            return name
        for spec in self.model_specs:
            if spec.source == name:
                return spec.name
        known = ", ".join(self.model_names)
        raise InvalidRequest("model", f"There is no model called {name!r} (known: {known}).")

    @property
    def limits(self) -> Limits:
        """The bounds requests are validated against."""
        return Limits.of(self)

    def __post_init__(self) -> None:
        if isinstance(self.cache_dir, str):  # a caller's "~/models" works like a Path
            folder = Path(self.cache_dir).expanduser() if self.cache_dir.strip() else None
            object.__setattr__(self, "cache_dir", folder)
        problems = list(self.problems())
        if problems:
            raise ValueError("; ".join(problems))

    def problems(self) -> list[str]:
        """Human-readable reasons this config cannot run, empty when it is fine."""
        out: list[str] = []
        if self.scheduler not in SCHEDULERS:
            out.append(f"scheduler must be one of {', '.join(SCHEDULERS)}, not {self.scheduler!r}")
        if self.backend not in {"local", "ray"}:
            out.append(f"backend must be local or ray, not {self.backend!r}")
        if self.scheduling not in {"batch", "step"}:
            out.append(f"scheduling must be batch or step, not {self.scheduling!r}")
        if not _DEVICE.match(self.device):
            out.append(f"device must be auto, cpu, mps, cuda or cuda:N, not {self.device!r}")
        if self.compile not in COMPILE_MODES:
            out.append(f"compile must be one of {', '.join(COMPILE_MODES)}, not {self.compile!r}")
        if any(b < 1 for b in self.compile_buckets):
            out.append("compile_buckets must be whole numbers of 1 or more")
        if self.dtype not in {"auto", "float16", "bfloat16", "float32"}:
            out.append(f"dtype must be auto, float16, bfloat16 or float32, not {self.dtype!r}")
        if not self.model.strip():
            out.append("model must name a hub id, a folder or builtin:tiny")
        out += self._model_problems()
        if self.max_count < 1:
            out.append("max_count must be at least 1")
        if not 0.0 < self.fix_threshold < 1.0:  # NaN fails too
            out.append(f"fix threshold must be between 0 and 1, not {self.fix_threshold:g}")
        if self.max_batch_size < self.max_count:
            out.append(
                f"max_batch_size ({self.max_batch_size}) must be at least max_count "
                f"({self.max_count}) so any single request fits in one batch"
            )
        if self.batch_wait_ms < 0:
            out.append("batch_wait_ms must not be negative")
        if self.max_queue < 1:
            out.append("max_queue must be at least 1")
        if self.max_steps < 1:
            out.append("max_steps must be at least 1")
        if self.max_prompt_chunks < 1:
            out.append("max_prompt_chunks must be at least 1")
        for name in ("max_width", "max_height", "min_size"):
            value = getattr(self, name)
            if value < 8 or value % 8:
                out.append(f"{name} must be a positive multiple of 8, not {value}")
        if self.min_size > min(self.max_width, self.max_height):
            out.append("min_size must not exceed max_width or max_height")
        return out

    def _model_problems(self) -> list[str]:
        out: list[str] = []
        names = [spec.name for spec in self.model_specs]
        for spec in self.models:
            out += spec.problems()
        if len(set(names)) != len(names):
            out.append("model names must be unique")
        if self.default_model and self.default_model not in names:
            out.append(
                f"default_model {self.default_model!r} is not a configured model "
                f"({', '.join(names)})"
            )
        if self.max_loaded_models < 1:
            out.append("max_loaded_models must be at least 1")
        if self.max_memory_gb < 0:
            out.append("max_memory_gb must be 0 (the GPU's memory) or more")
        seen: set[str] = set()
        for lora in self.loras:
            out += lora.problems()
            if lora.name in seen:
                out.append(f"LoRA {lora.name} is configured twice")
            seen.add(lora.name)
            unknown = [m for m in lora.models if m not in names]
            if unknown:
                out.append(
                    f"LoRA {lora.name}: models {', '.join(unknown)} are not configured "
                    f"(configured: {', '.join(names)})"
                )
        return out


_DEFAULTS = EngineConfig()


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on requests: `EngineConfig`'s limit fields, with its defaults."""

    max_width: int = _DEFAULTS.max_width
    max_height: int = _DEFAULTS.max_height
    min_size: int = _DEFAULTS.min_size
    max_steps: int = _DEFAULTS.max_steps
    max_count: int = _DEFAULTS.max_count
    max_guidance: float = _DEFAULTS.max_guidance
    max_prompt_chunks: int = _DEFAULTS.max_prompt_chunks

    @classmethod
    def of(cls, config: EngineConfig) -> Limits:
        """The limits a config sets."""
        return cls(**{f.name: getattr(config, f.name) for f in fields(cls)})
