"""`imagine-bot`: `run` starts the Discord bot; `generate` and `upscale` make images from the
command line (offline with `--model builtin:tiny`).

`imagine-bot --config config.toml` (and `python -m bot --config config.toml`) is short for
`imagine-bot run --config config.toml`.

Every failure a user can fix ends with one line saying what to fix and exit code 2; no
traceback reaches the terminal for a bad config, token or option.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from engine import (
    ASPECT_RATIOS,
    UPSCALE_FACTOR,
    UPSCALE_STRENGTH,
    Engine,
    EngineConfig,
    EngineError,
    GenerationResult,
    ImageRequest,
    InvalidRequest,
    Job,
    JobState,
    ModelProfile,
    Parameters,
    read_parameters,
    upscale_request,
)
from engine.config import ModelSpec, model_name_of
from engine.model_hash import spec_hash
from engine.picture import decode_picture
from engine.pngmeta import png_to_jpeg
from engine.request import validate
from engine.tiny import BUILTIN_MODELS

from .config import BotConfig, ConfigError, load_config

__all__ = ["default_to_run", "main"]

DEFAULT_CONFIG = "config.toml"


def _version() -> str:
    """The installed package's version (`pyproject.toml`)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("imagine-bot")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imagine-bot", description="Self-hosted Stable Diffusion bot for Discord."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the Discord bot")
    run.add_argument("--config", default=DEFAULT_CONFIG, help="TOML config (default: %(default)s)")

    doc = sub.add_parser("doctor", help="check a set-up and say what to fix (changes nothing)")
    doc.add_argument("--config", default=DEFAULT_CONFIG, help="TOML config (default: %(default)s)")

    gen = sub.add_parser("generate", help="make images once, without Discord")
    gen.add_argument("prompt")
    gen.add_argument(
        "--config", help=f"TOML config for [engine] (default: {DEFAULT_CONFIG} if present)"
    )
    gen.add_argument(
        "--model", help="a configured model's name, or a hub id, folder or builtin:tiny"
    )
    gen.add_argument("--device", help="auto, cuda, mps or cpu (overrides the config)")
    gen.add_argument("--negative", default="", help="negative prompt")
    gen.add_argument("--seed", type=int, help="seed (random when omitted)")
    gen.add_argument("--steps", type=int, help="denoising steps (model default when omitted)")
    gen.add_argument("--guidance", type=float, help="CFG scale (model default when omitted)")
    gen.add_argument("--size", help="WIDTHxHEIGHT, e.g. 512x768 (model's native size by default)")
    gen.add_argument(
        "--ar", help=f"aspect ratio at the model's native area, e.g. {', '.join(ASPECT_RATIOS)}"
    )
    gen.add_argument("--image", help="a PNG, JPEG or WebP to start from (image-to-image)")
    gen.add_argument(
        "--strength", type=float, help="with --image: how much to change it, 0.05-1 (0.6)"
    )
    gen.add_argument("--count", type=int, default=1, help="images to make (default 1)")
    gen.add_argument(
        "--out", default="imagine.png", help="output .png or .jpg (default: %(default)s)"
    )

    up = sub.add_parser("upscale", help="an image made by imagine-bot, at twice its size")
    up.add_argument("image", help="a PNG made by imagine-bot (or A1111): its prompt and seed")
    up.add_argument("--config", help=f"TOML config for [engine] (default: {DEFAULT_CONFIG})")
    up.add_argument(
        "--model",
        help="a configured model's name, or a hub id, folder or builtin:tiny (default: the "
        "model the image names, by its name or its Model hash)",
    )
    up.add_argument("--device", help="auto, cuda, mps or cpu (overrides the config)")
    up.add_argument(
        "--strength",
        type=float,
        default=UPSCALE_STRENGTH,
        help="how much the refinement may change (default: %(default)s)",
    )
    up.add_argument(
        "--out", help="output .png or .jpg (default: the input's name with -upscaled.png)"
    )
    return parser


def _size(text: str | None) -> tuple[int | None, int | None]:
    if not text:
        return None, None
    w, sep, h = text.lower().partition("x")
    if not sep or not w.isdigit() or not h.isdigit():
        raise ConfigError([f"--size must look like 512x768, not {text!r}"], "options")
    return int(w), int(h)


def _engine_config(
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


#: What `--out` may end in, and the format each writes.
OUT_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}


def _out_path(out: str) -> Path:
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


def _picture(path: str) -> tuple[bytes, Any]:
    """The file at `path` and its picture, decoded as the bot decodes attachments."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError([f"cannot read {path}: {exc.strerror}"], "options") from None
    try:
        return data, decode_picture(data)
    except InvalidRequest as exc:
        raise ConfigError([f"{path}: {exc}"], "options") from None


async def _generate(args: argparse.Namespace) -> int:
    out = _out_path(args.out)
    config = _engine_config(args)
    width, height = _size(args.size)
    request = ImageRequest(
        prompt=args.prompt,
        negative_prompt=args.negative,
        seed=args.seed,
        steps=args.steps,
        guidance=args.guidance,
        width=width,
        height=height,
        count=args.count,
        user="cli",
        init_image=_picture(args.image)[1] if args.image else None,
        strength=args.strength,
        aspect=args.ar,
    )
    return await _make(config, request, out)


def _made_with(params: Parameters, source: Path) -> Callable[[EngineConfig], ModelSpec]:
    """Picks the model an image was made with, and says which (one line): the configured
    model its parameters name; else the one whose files have its `Model hash` (a model
    renamed in the config); else the builtin of that name; else the default model."""

    def pick(engine: EngineConfig) -> ModelSpec:
        spec, why = _recorded_model(engine, params, source.name)
        print(f"upscaling with model {spec.name} ({why})", file=sys.stderr)
        return spec

    return pick


def _recorded_model(engine: EngineConfig, params: Parameters, name: str) -> tuple[ModelSpec, str]:
    """The model `_made_with` picks for the image called `name`, and why."""
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


async def _upscale(args: argparse.Namespace) -> int:
    source = Path(args.image)
    out = _out_path(args.out or str(source.with_name(f"{source.stem}-upscaled.png")))
    data, image = _picture(args.image)
    params = read_parameters(data)
    if params is None or not params.prompt:
        raise ConfigError(
            [f"{source} has no generation parameters (prompt, seed) to upscale from"], "options"
        )
    config = _engine_config(args, _made_with(params, source))
    request = upscale_request(
        params,
        image,
        config.engine.limits,
        factor=UPSCALE_FACTOR,
        strength=args.strength,
        user="cli",
        origin=source.name,
        models=(config.engine.default_model_name,),
    )
    return await _make(config, request, out)


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
    )
    loras = {lora.name: lora for lora in config.engine.loras}
    validate(request, limits, stand_in, lambda text: 0, loras=loras)


async def _make(config: BotConfig, request: ImageRequest, out: Path) -> int:
    _precheck(config, request)
    async with Engine(config.engine) as engine:
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


def default_to_run(argv: Sequence[str]) -> list[str]:
    """`imagine-bot --config x.toml` means `imagine-bot run --config x.toml`."""
    args = list(argv)
    commands = ("run", "generate", "upscale", "doctor", "-h", "--help", "--version")
    if any(a in commands for a in args):
        return args
    if not any(a == "--config" or a.startswith("--config=") for a in args):
        return args  # nothing to guess: argparse explains the usage
    first = next((i for i, a in enumerate(args) if a not in ("-v", "--verbose")), len(args))
    return [*args[:first], "run", *args[first:]]


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(default_to_run(sys.argv[1:] if argv is None else argv))
    # transformers warns about optional packages (torchvision) at import: noise for operators.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Alembic logs its plugin set-up at INFO when first imported: noise at every start.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        if args.command == "generate":
            return asyncio.run(_generate(args))
        if args.command == "upscale":
            return asyncio.run(_upscale(args))
        if args.command == "doctor":
            from .ops.doctor import run_doctor

            return asyncio.run(run_doctor(args.config))
        from .app import run_bot  # the Discord side is imported only when it runs

        return run_bot(args.config)
    except ConfigError as exc:
        print(f"imagine-bot: {exc}", file=sys.stderr)
        return 2
    except EngineError as exc:
        print(f"imagine-bot: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
