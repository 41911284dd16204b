"""`imagine-bot zoom`, `pan`, `inpaint` and `fix`: a picture's canvas (or mask) inpainted with
its own parameters, by the model it names (the Discord buttons' recipes, `engine.derived`).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from engine import Engine, ImageRequest, Parameters, read_parameters
from engine.canvas import Canvas, pan, zoom_out
from engine.derived import canvas_request, fix_request

from .cli_make import engine_config, made_with, make, out_path, picture_at
from .config import ConfigError

__all__ = ["canvas", "fix"]


async def canvas(args: argparse.Namespace) -> int:
    """`zoom`, `pan`, `inpaint`: the picture's canvas (or mask) inpainted with its own
    parameters (its prompt, unless another is given), by the model it names."""
    source = Path(args.image)
    out = out_path(args.out or str(source.with_name(f"{source.stem}-{args.command}.png")))
    data, image = picture_at(args.image)
    params = read_parameters(data)
    prompt = args.prompt
    if params is None or not params.prompt:
        if not prompt:
            raise ConfigError([f"{source} has no parameters: give --prompt"], "options")
        params = Parameters(prompt, "", 0, "", 0.0, 0, image.width, image.height, "")
    config = engine_config(args, made_with(params, source) if params.model else None)
    limits = config.engine.limits
    if args.command == "zoom":
        canvas = zoom_out(image, args.factor)
    elif args.command == "pan":
        canvas = pan(image, args.direction, limits)
    elif args.mask:
        canvas = Canvas(image, picture_at(args.mask)[1], ())
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

        return await make(config, None, out, build=build)
    return await make(config, request_for(canvas.mask), out)


def _share(mask: Any) -> float:
    """The share of a mask's pixels that are white."""
    histogram = mask.histogram()
    return sum(histogram[128:]) / max(1, sum(histogram))


async def fix(args: argparse.Namespace) -> int:
    """`fix`: the faces the detector finds made again at ADetailer's strength, the rest of
    the picture kept; no face found is one line, before anything is made."""
    source = Path(args.image)
    out = out_path(args.out or str(source.with_name(f"{source.stem}-fix.png")))
    data, image = picture_at(args.image)
    params = read_parameters(data)
    if params is None or not params.prompt:
        if not args.prompt:
            raise ConfigError([f"{source} has no parameters: give --prompt"], "options")
        params = Parameters(args.prompt, "", 0, "", 0.0, 0, image.width, image.height, "")
    config = engine_config(
        args, made_with(params, source, "fixing faces") if params.model else None
    )
    changes: dict[str, Any] = {}
    if args.detector:
        changes["fix_detector"] = args.detector
    if args.threshold is not None:
        changes["fix_threshold"] = args.threshold
    try:
        engine_settings = dataclasses.replace(config.engine, **changes)
    except ValueError as exc:  # a threshold outside 0..1
        raise ConfigError([str(exc)], "options") from None
    if not engine_settings.fix_detector:
        raise ConfigError(["no face detector: set [fix] detector or give --detector"], "options")
    config = dataclasses.replace(config, engine=engine_settings)
    name = Path(engine_settings.fix_detector).name.removeprefix("builtin:")

    async def build(engine: Engine) -> ImageRequest:
        boxes = await engine.detect_faces(image)
        print(f"faces found: {len(boxes)}", file=sys.stderr)
        asked = fix_request(
            params,
            image,
            boxes,
            engine.limits,
            detector=name,
            seed=args.seed,
            user="cli",
            origin=source.name,
            models=(engine.default_model,),
        )
        return dataclasses.replace(asked, prompt=args.prompt or asked.prompt)

    return await make(config, None, out, build=build)
