"""`imagine-bot`: `run` starts the Discord bot; `generate`, `upscale`, `zoom`, `pan` and
`inpaint` make images from the command line (offline with `--model builtin:tiny`), `describe`
prompts from a picture.

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
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from engine import (
    UPSCALE_FACTOR,
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
from engine.canvas import Canvas, pan, zoom_out
from engine.config import ModelSpec, model_name_of
from engine.derived import canvas_request
from engine.model_hash import spec_hash
from engine.picture import decode_picture
from engine.pngmeta import encode_png, png_to_jpeg
from engine.request import validate
from engine.sources import not_a_source
from engine.tiny import BUILTIN_MODELS

from .cli_args import DEFAULT_CONFIG, build_parser, default_to_run
from .config import BotConfig, ConfigError, load_config

__all__ = ["default_to_run", "main"]


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
    paths = args.image or []
    pictures = tuple(_picture(path)[1] for path in paths)
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
        init_image=pictures[0] if len(pictures) == 1 else None,
        references=pictures if len(pictures) > 1 else (),
        strength=args.strength,
        aspect=args.ar,
        parameters=(("Source", ", ".join(Path(p).name for p in paths)),) if paths else (),
        fast=args.fast,
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
    if args.upscaler:
        engine = dataclasses.replace(config.engine, upscale_model=args.upscaler)
        config = dataclasses.replace(config, engine=engine)
    gan = args.gan or args.subtle
    if gan and not config.engine.upscale_model:
        raise ConfigError(["no GAN upscaler: set [upscale] model or give --upscaler"], "options")
    request = upscale_request(
        params,
        image,
        config.engine.limits,
        factor=GAN_FACTOR if gan else UPSCALE_FACTOR,
        strength=args.strength,
        user="cli",
        origin=source.name,
        models=(config.engine.default_model_name,),
    )
    if not gan:
        return await _make(config, request, out)
    name = Path(config.engine.upscale_model).stem.removeprefix("builtin:")
    if args.subtle:
        return await _gan_alone(config, params, image, request, out, name)

    async def build(engine: Engine) -> ImageRequest:
        """The GAN's picture (at the limits' size) as the refinement's init image."""
        assert request.width is not None and request.height is not None
        big = await engine.gan_upscale(image)
        init = big.resize((request.width, request.height), Image.Resampling.LANCZOS)
        extra = (*request.parameters, ("Hires upscaler", name))
        return dataclasses.replace(request, init_image=init, parameters=extra)

    return await _make(config, None, out, build=build)


#: A GAN upscale enlarges 4x where the limits allow (ESRGANs are 4x).
GAN_FACTOR = 4.0


async def _gan_alone(
    config: BotConfig, params: Parameters, image: Any, asked: ImageRequest, out: Path, name: str
) -> int:
    """Upscale (subtle): the GAN's picture alone, at the limits' size, with the source's
    parameters and A1111's extras fields (`Postprocess upscaler`, `... upscale by`)."""
    assert asked.width is not None and asked.height is not None
    async with Engine(config.engine) as engine:
        big = await engine.gan_upscale(image)
    big = big.resize((asked.width, asked.height), Image.Resampling.LANCZOS)
    factor = asked.width / image.width
    extra = (
        *params.extra,
        ("Postprocess upscale by", f"{factor:g}"),
        ("Postprocess upscaler", name),
    )
    fields = dataclasses.replace(params, width=big.width, height=big.height, extra=extra)
    png = encode_png(big, fields)
    jpeg = OUT_FORMATS[out.suffix.lower()] == "JPEG"
    await asyncio.to_thread(out.write_bytes, png_to_jpeg(png) if jpeg else png)
    print(f"wrote {out} ({big.width}x{big.height}, seed {params.seed})")
    return 0


async def _canvas(args: argparse.Namespace) -> int:
    """`zoom`, `pan`, `inpaint`: the picture's canvas (or mask) inpainted with its own
    parameters (its prompt, unless another is given), by the model it names."""
    source = Path(args.image)
    out = _out_path(args.out or str(source.with_name(f"{source.stem}-{args.command}.png")))
    data, image = _picture(args.image)
    params = read_parameters(data)
    prompt = args.prompt
    if params is None or not params.prompt:
        if not prompt:
            raise ConfigError([f"{source} has no parameters: give --prompt"], "options")
        params = Parameters(prompt, "", 0, "", 0.0, 0, image.width, image.height, "")
    config = _engine_config(args, _made_with(params, source) if params.model else None)
    limits = config.engine.limits
    if args.command == "zoom":
        canvas = zoom_out(image, args.factor)
    elif args.command == "pan":
        canvas = pan(image, args.direction, limits)
    elif args.mask:
        canvas = Canvas(image, _picture(args.mask)[1], ())
    else:
        canvas = Canvas(image, image, ())  # the mask comes from the region model

    def request_for(mask: Any) -> ImageRequest:
        asked = canvas_request(
            params,
            Canvas(canvas.picture, mask, canvas.parameters),
            limits,
            prompt=prompt,
            padding=getattr(args, "only_masked", None),
            seed=args.seed,
            user="cli",
            origin=source.name,
            models=(config.engine.default_model_name,),
        )
        changes: dict[str, Any] = {"mask_blur": args.mask_blur}
        for name in ("steps", "guidance", "strength"):
            if getattr(args, name) is not None:
                changes[name] = getattr(args, name)
        return dataclasses.replace(asked, **changes)

    if getattr(args, "region", None):
        region: str = args.region

        async def build(engine: Engine) -> ImageRequest:
            mask = await engine.region_mask(image, region)
            print(f"region {region!r}: {_share(mask):.0%} of the picture", file=sys.stderr)
            return request_for(mask)

        return await _make(config, None, out, build=build)
    return await _make(config, request_for(canvas.mask), out)


def _share(mask: Any) -> float:
    """The share of a mask's pixels that are white."""
    histogram = mask.histogram()
    return sum(histogram[128:]) / max(1, sum(histogram))


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
    validate(request, limits, stand_in, lambda text: 0, loras=loras)


async def _make(
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


def _logging(verbose: bool) -> None:
    """imagine-bot's own lines at INFO (DEBUG with -v). The libraries' warnings reach the
    terminal only with -v: Python warnings (a deprecated argument diffusers passes to
    huggingface_hub), transformers' notes on optional packages (torchvision) at import,
    huggingface_hub's and diffusers' own loggers. imagine-bot's messages say what matters."""
    level = "warning" if verbose else "error"
    for variable in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY", "HF_HUB_VERBOSITY"):
        os.environ.setdefault(variable, level)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.captureWarnings(True)  # as log records of `py.warnings`
    logging.getLogger("py.warnings").setLevel(logging.WARNING if verbose else logging.ERROR)
    # Alembic logs its plugin set-up at INFO when first imported: noise at every start.
    logging.getLogger("alembic").setLevel(logging.WARNING)


def _describe(args: argparse.Namespace) -> int:
    """Print the describe model's candidate prompts for the picture, one a line. The model is
    loaded alone (no image model: `Engine` would load those first)."""
    from engine.config import DescribeConfig
    from engine.describe import Describer

    _, picture = _picture(args.image)
    path = args.config or (DEFAULT_CONFIG if Path(DEFAULT_CONFIG).exists() else None)
    engine = (load_config(path) if path else BotConfig()).engine
    if args.model:
        engine = dataclasses.replace(engine, describe=DescribeConfig(args.model))
    if args.device:
        engine = dataclasses.replace(engine, device=args.device)
    if not engine.describe.model:
        raise ConfigError(["describing is off: [describe] model is empty (or --model)"], "options")
    describer = Describer(engine)
    print(f"describing with {engine.describe.model}...", file=sys.stderr, flush=True)
    try:
        describer.load()
    except Exception as exc:  # a hub id that is not there, a folder that is not a model
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError([f"cannot load {engine.describe.model}: {why}"], "options") from None
    for prompt in describer.describe(picture):
        print(prompt)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(default_to_run(sys.argv[1:] if argv is None else argv))
    _logging(args.verbose)
    try:
        if args.command == "generate":
            return asyncio.run(_generate(args))
        if args.command == "upscale":
            return asyncio.run(_upscale(args))
        if args.command == "describe":
            return _describe(args)
        if args.command in ("zoom", "pan", "inpaint"):
            return asyncio.run(_canvas(args))
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
