"""The one-shot commands' shared parts: the config with one model, the checked `--out`, the
pictures read as the bot reads attachments, and `make`, which runs a request on an engine
of its own and writes its images.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from engine import (
    Engine,
    EngineConfig,
    GenerationResult,
    ImageRequest,
    InvalidRequest,
    Job,
    JobState,
    ModelProfile,
    Parameters,
)
from engine.config import ModelSpec, model_name_of
from engine.model_hash import spec_hash
from engine.picture import decode_picture
from engine.pngmeta import png_to_jpeg
from engine.request import validate
from engine.sources import not_a_source
from engine.tiny import BUILTIN_MODELS

from .cli_args import DEFAULT_CONFIG
from .config import BotConfig, ConfigError, load_config

__all__ = ["OUT_FORMATS", "engine_config", "made_with", "make", "out_path", "picture_at"]


def engine_config(
    args: argparse.Namespace, made_with: Callable[[EngineConfig], ModelSpec] | None = None
) -> BotConfig:
    """The config with one model only (a one-shot command should not load every configured
    model): `--model` names a configured model, or is a hub id or folder; else `made_with`
    picks it (upscale: the image's own), else the default model."""
    path = args.config or (DEFAULT_CONFIG if Path(DEFAULT_CONFIG).exists() else None)
    config = load_config(path) if path else BotConfig()
    engine = config.engine
    names = [spec.name for spec in engine.model_specs]
    if args.model and args.model not in names:
        _check_source(args.model, names)
        spec = ModelSpec(name=model_name_of(args.model), source=args.model)
    elif args.model or made_with is None:
        spec = engine.model_spec(args.model or engine.default_model_name)
    else:
        spec = made_with(engine)
    loras = tuple(
        dataclasses.replace(lora, models=()) for lora in engine.loras if lora.fits(spec.name)
    )
    overrides: dict[str, Any] = {"models": (spec,), "default_model": spec.name, "loras": loras}
    if args.device:
        overrides["device"] = args.device
    try:
        engine = dataclasses.replace(engine, **overrides)  # validates itself
    except ValueError as exc:
        raise ConfigError([str(exc)], "options") from None
    return dataclasses.replace(config, engine=engine)


def _check_source(model: str, names: Sequence[str]) -> None:
    """`--model` that is neither a configured name nor a file or folder here must look like a
    hub id (`org/name`): a bare word is a mistyped name, and asking the hub for it would only
    blame the network."""
    if Path(model).expanduser().exists() or not_a_source(model) is None:
        return
    raise ConfigError(
        [
            f"no configured model called {model!r} (configured: {', '.join(names)}); --model "
            "also takes a hub id (org/name), a folder, a .safetensors file or builtin:tiny"
        ],
        "options",
    )


#: What `--out` may end in, and the format each writes.
OUT_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}


def out_path(out: str) -> Path:
    """`--out`, checked before any model loads: a .png or .jpg in an existing folder this user
    may write in. Folders are never made: a typo must not scatter files."""
    path = Path(out)
    if path.is_dir():
        raise ConfigError([f"--out {out} is a folder; name a .png or .jpg file"], "options")
    if path.suffix.lower() not in OUT_FORMATS:
        raise ConfigError([f"--out {out}: name a .png or .jpg file"], "options")
    folder = path.parent
    if not folder.exists():
        raise ConfigError([f"--out {out}: the folder {folder} does not exist"], "options")
    if not folder.is_dir():
        raise ConfigError([f"--out {out}: {folder} is not a folder"], "options")
    try:  # the one sure test (modes say nothing for root, /proc takes no new files)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".imagine-bot-"):
            pass
    except OSError as exc:
        why = exc.strerror or str(exc)
        raise ConfigError([f"--out {out}: cannot write in {folder} ({why})"], "options") from None
    return path


def _outputs(path: Path, count: int) -> list[Path]:
    """The files for `count` images: `path`, or `x-1.png`, `x-2.png` ... for several."""
    if count == 1:
        return [path]
    return [path.with_name(f"{path.stem}-{i + 1}{path.suffix}") for i in range(count)]


def picture_at(path: str) -> tuple[bytes, Any]:
    """The file at `path` and its picture, decoded as the bot decodes attachments."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError([f"cannot read {path}: {exc.strerror}"], "options") from None
    try:
        return data, decode_picture(data)
    except InvalidRequest as exc:
        raise ConfigError([f"{path}: {exc}"], "options") from None


def made_with(
    params: Parameters, source: Path, doing: str = "upscaling"
) -> Callable[[EngineConfig], ModelSpec]:
    """Picks the model an image was made with, and says which (one line): the configured
    model its parameters name; else the one whose files have its `Model hash` (a model
    renamed in the config); else the builtin of that name; else the default model."""

    def pick(engine: EngineConfig) -> ModelSpec:
        spec, why = _recorded_model(engine, params, source.name)
        print(f"{doing} with model {spec.name} ({why})", file=sys.stderr)
        return spec

    return pick


def _recorded_model(engine: EngineConfig, params: Parameters, name: str) -> tuple[ModelSpec, str]:
    """The model `made_with` picks for the image called `name`, and why."""
    if params.model in engine.model_names:
        return engine.model_spec(params.model), f"{name} was made with it"
    recorded = dict(params.extra).get("Model hash", "")
    if recorded:
        same = [spec for spec in engine.model_specs if spec_hash(spec, engine) == recorded]
        if len(same) == 1:
            return same[0], f"{name} was made with {params.model!r}, Model hash {recorded}"
    builtin = f"builtin:{params.model}"
    if builtin in BUILTIN_MODELS:
        return ModelSpec(name=params.model, source=builtin), f"{name} was made with it"
    default = engine.model_spec(engine.default_model_name)
    made = repr(params.model) if params.model else "a model it does not name"
    return (
        default,
        f"the default: {name} was made with {made}, not configured here; --model picks another",
    )


def _precheck(config: BotConfig, request: ImageRequest) -> None:
    """Refuse bad options before a model is loaded (a real model may first download GBs):
    validation against the limits with a stand-in model profile, whose defaults are only
    used to resolve what the user left out (the output paths are checked first)."""
    limits = config.engine.limits
    native = max(limits.min_size, min(512, limits.max_width, limits.max_height) // 8 * 8)
    stand_in = ModelProfile(
        name=config.engine.default_model_name,
        family="sd",
        native_size=native,
        default_steps=1,
        default_guidance=0.0,
        sampler="",
        max_references=len(request.references),
        inpaint=True,  # the real model's profile says, once loaded
        inpaint_crop=True,
    )
    loras = {lora.name: lora for lora in config.engine.loras}
    fixers = config.engine.fix_detectors
    validate(request, limits, stand_in, lambda text: 0, loras=loras, fixers=fixers)


async def make(
    config: BotConfig,
    request: ImageRequest | None,
    out: Path,
    *,
    build: Callable[[Engine], Awaitable[ImageRequest]] | None = None,
) -> int:
    """Make `request` (or the one `build` makes once the engine runs) and write its images."""
    if request is not None:
        _precheck(config, request)
    async with Engine(config.engine) as engine:
        if build is not None:
            request = await build(engine)
        assert request is not None
        if engine.profile.edits and request.init_image is not None and request.mask is None:
            picture = request.init_image  # an edit, not image-to-image
            request = dataclasses.replace(request, init_image=None, references=(picture,))
        job = engine.submit(await engine.check(request))
        for warning in job.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        try:
            result = await _follow(job)
        except asyncio.CancelledError:  # Ctrl-C: stop at the next step, not after the image
            job.cancel()
            print("imagine-bot: cancelled", file=sys.stderr)
            raise
    for path, image in zip(_outputs(out, len(result.images)), result.images, strict=True):
        jpeg = OUT_FORMATS[path.suffix.lower()] == "JPEG"
        try:
            path.write_bytes(png_to_jpeg(image.png) if jpeg else image.png)
        except OSError as exc:  # the disk filled up while generating
            raise ConfigError([f"cannot write {path}: {exc.strerror or exc}"], "options") from None
        flag = " (flagged by the safety checker)" if image.flagged else ""
        if request.fix:
            found = " and ".join(image.fixed) or f"no {' or '.join(request.fix)} found"
            flag += f" ({found} fixed)" if image.fixed else f" ({found})"
        print(f"wrote {path} ({image.width}x{image.height}, seed {image.seed}){flag}")
    if result.failed:
        print(
            f"warning: {result.failed} image(s) came out blank (NaN) and were not written",
            file=sys.stderr,
        )
    return 0


async def _follow(job: Job) -> GenerationResult:
    """The job's result; its step progress on one terminal line meanwhile."""
    print("generating... (Ctrl-C stops)", file=sys.stderr, flush=True)
    if not sys.stderr.isatty():
        return await job.result()
    async for progress in job.updates():
        if progress.loading:
            text = f"loading model {progress.loading}"
        elif progress.total_steps and progress.state is JobState.RUNNING:
            text = f"step {progress.step}/{progress.total_steps}"
        else:
            continue
        print(f"\r{text}   ", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return await job.result()
