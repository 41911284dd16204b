"""`imagine-bot`: `run` starts the Discord bot, `generate` makes images from the command line.

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

from engine import Engine, EngineError, ImageRequest

from .config import BotConfig, ConfigError, load_config

__all__ = ["default_to_run", "main"]

DEFAULT_CONFIG = "config.toml"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imagine-bot", description="Self-hosted Stable Diffusion bot for Discord."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the Discord bot")
    run.add_argument("--config", default=DEFAULT_CONFIG, help="TOML config (default: %(default)s)")

    gen = sub.add_parser("generate", help="make images once, without Discord")
    gen.add_argument("prompt")
    gen.add_argument(
        "--config", help=f"TOML config for [engine] (default: {DEFAULT_CONFIG} if present)"
    )
    gen.add_argument("--model", help="hub id, local folder or builtin:tiny (overrides the config)")
    gen.add_argument("--device", help="auto, cuda, mps or cpu (overrides the config)")
    gen.add_argument("--negative", default="", help="negative prompt")
    gen.add_argument("--seed", type=int, help="seed (random when omitted)")
    gen.add_argument("--steps", type=int, help="denoising steps (model default when omitted)")
    gen.add_argument("--guidance", type=float, help="CFG scale (model default when omitted)")
    gen.add_argument("--size", help="WIDTHxHEIGHT, e.g. 512x768 (model's native size by default)")
    gen.add_argument("--count", type=int, default=1, help="images to make (default 1)")
    gen.add_argument("--out", default="imagine.png", help="output PNG (default: %(default)s)")
    return parser


def _size(text: str | None) -> tuple[int | None, int | None]:
    if not text:
        return None, None
    w, sep, h = text.lower().partition("x")
    if not sep or not w.isdigit() or not h.isdigit():
        raise ConfigError([f"--size must look like 512x768, not {text!r}"], "options")
    return int(w), int(h)


def _engine_config(args: argparse.Namespace) -> BotConfig:
    path = args.config or (DEFAULT_CONFIG if Path(DEFAULT_CONFIG).exists() else None)
    config = load_config(path) if path else BotConfig()
    overrides = {k: v for k, v in (("model", args.model), ("device", args.device)) if v}
    if overrides:
        try:
            engine = dataclasses.replace(config.engine, **overrides)  # validates itself
        except ValueError as exc:
            raise ConfigError([str(exc)], "options") from None
        config = dataclasses.replace(config, engine=engine)
    return config


def _outputs(out: str, count: int) -> list[Path]:
    path = Path(out)
    if count == 1:
        return [path]
    return [path.with_name(f"{path.stem}-{i + 1}{path.suffix or '.png'}") for i in range(count)]


async def _generate(args: argparse.Namespace) -> int:
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
    )
    async with Engine(config.engine) as engine:
        job = engine.submit(request)
        for warning in job.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        result = await job.result()
    for path, image in zip(_outputs(args.out, len(result.images)), result.images, strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image.png)
        flag = " (flagged by the safety checker)" if image.flagged else ""
        print(f"wrote {path} (seed {image.seed}){flag}")
    return 0


def default_to_run(argv: Sequence[str]) -> list[str]:
    """`imagine-bot --config x.toml` means `imagine-bot run --config x.toml`."""
    args = list(argv)
    if any(a in ("run", "generate", "-h", "--help") for a in args):
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
