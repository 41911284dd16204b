"""`imagine-bot`: `run` starts the Discord bot; `generate`, `upscale`, `zoom`, `pan`,
`inpaint` and `fix` (`cli_canvas.py`) make images from the command line (offline with
`--model builtin:tiny`), `describe` prompts from a picture.

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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from engine import (
    UPSCALE_FACTOR,
    Engine,
    EngineError,
    ImageRequest,
    Parameters,
    read_parameters,
    upscale_request,
)
from engine.fixing import FIX_CHOICES
from engine.pngmeta import encode_png, png_to_jpeg

from .cli_args import DEFAULT_CONFIG, build_parser, default_to_run
from .cli_canvas import canvas, fix
from .cli_make import OUT_FORMATS, engine_config, made_with, make, out_path, picture_at
from .config import BotConfig, ConfigError, load_config

__all__ = ["default_to_run", "main"]


def _size(text: str | None) -> tuple[int | None, int | None]:
    if not text:
        return None, None
    w, sep, h = text.lower().partition("x")
    if not sep or not w.isdigit() or not h.isdigit():
        raise ConfigError([f"--size must look like 512x768, not {text!r}"], "options")
    return int(w), int(h)


async def _generate(args: argparse.Namespace) -> int:
    out = out_path(args.out)
    config = engine_config(args)
    detectors = {"fix_detector": args.detector, "fix_hands_detector": args.hands_detector}
    if any(detectors.values()):
        engine = dataclasses.replace(
            config.engine, **{key: value for key, value in detectors.items() if value}
        )
        config = dataclasses.replace(config, engine=engine)
    width, height = _size(args.size)
    paths = args.image or []
    pictures = tuple(picture_at(path)[1] for path in paths)
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
        fix=FIX_CHOICES[args.fix] if args.fix else (),
    )
    return await make(config, request, out)


async def _upscale(args: argparse.Namespace) -> int:
    source = Path(args.image)
    out = out_path(args.out or str(source.with_name(f"{source.stem}-upscaled.png")))
    data, image = picture_at(args.image)
    params = read_parameters(data)
    if params is None or not params.prompt:
        raise ConfigError(
            [f"{source} has no generation parameters (prompt, seed) to upscale from"], "options"
        )
    config = engine_config(args, made_with(params, source))
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
        return await make(config, request, out)
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

    return await make(config, None, out, build=build)


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
    """Print the describe model's candidate prompts for the picture (with `--tags`, the
    tagger's), one a line. The model is loaded alone (no image model: `Engine` would load
    those first)."""
    from engine.describe import Describer
    from engine.tagger import Tagger

    _, picture = picture_at(args.image)
    path = args.config or (DEFAULT_CONFIG if Path(DEFAULT_CONFIG).exists() else None)
    engine = (load_config(path) if path else BotConfig()).engine
    key = "tagger" if args.tags else "model"
    if args.model:
        described = dataclasses.replace(engine.describe, **{key: args.model})
        engine = dataclasses.replace(engine, describe=described)
    if args.device:
        engine = dataclasses.replace(engine, device=args.device)
    source = getattr(engine.describe, key)
    if not source:
        off = "describing as tags" if args.tags else "describing"
        raise ConfigError([f"{off} is off: [describe] {key} is empty (or --model)"], "options")
    reader = Tagger(engine) if args.tags else Describer(engine)
    print(f"describing with {source}...", file=sys.stderr, flush=True)
    try:
        reader.load()
    except Exception as exc:  # a hub id that is not there, a folder that is not a model
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError([f"cannot load {source}: {why}"], "options") from None
    for prompt in reader.describe(picture):
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
            return asyncio.run(canvas(args))
        if args.command == "fix":
            return asyncio.run(fix(args))
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
