"""`imagine-bot`'s command line: its subcommands and options, and the help a newcomer reads
first (the default model and what it downloads, where the token comes from, examples).
`bot.cli` runs what it parses.
"""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Sequence
from typing import Any

from engine import ASPECT_RATIOS, UPSCALE_STRENGTH, EngineConfig
from engine.fixing import FIX_CHOICES

__all__ = ["DEFAULT_CONFIG", "DEFAULT_MODEL", "build_parser", "default_to_run"]

DEFAULT_CONFIG = "config.toml"


def _version() -> str:
    """The installed package's version (`pyproject.toml`)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("imagine-bot")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


#: The default model, in a newcomer's terms (docs/models.md has the sources of the figures).
DEFAULT_MODEL = (
    f"The model is [engine] model of the config, by default {EngineConfig().model} (SD-Turbo: "
    "a 5.2 GB download, once, into the Hugging Face cache; 2.6 GB of GPU memory; one step per "
    "image). builtin:tiny needs no download and no GPU (random weights: its images are noise)."
)
TOKEN = (
    "The bot token is read from the environment variable DISCORD_TOKEN ([discord] token_env "
    "names another); get it in Discord's developer portal: your application, Bot, Reset Token."
)
#: `--config` of the one-shot commands, described once for both.
ONE_SHOT_CONFIG = (
    f"TOML config for [engine] and [models.*] (default: {DEFAULT_CONFIG} if it exists, else "
    "the built-in defaults)"
)


def _paragraphs(*texts: str) -> str:
    """Help text in paragraphs of a terminal's width (the examples keep their lines)."""
    return "\n\n".join(textwrap.fill(text, 79, break_on_hyphens=False) for text in texts if text)


def _sub(
    sub: Any,
    name: str,
    summary: str,
    text: Sequence[str],
    examples: Sequence[str],
    common: argparse.ArgumentParser,
) -> argparse.ArgumentParser:
    """A subcommand whose `--help` says what it does, then examples."""
    return sub.add_parser(
        name,
        help=summary,
        description=_paragraphs(f"{summary[0].upper()}{summary[1:]}. {text[0]}", *text[1:]),
        epilog="examples:\n" + "\n".join(f"  {line}" for line in examples),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )


def build_parser() -> argparse.ArgumentParser:
    """The command line: its subcommands, options and help."""
    # -v is taken before or after the subcommand: `imagine-bot -v run` or `... run -v`.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="log debug messages and the libraries' warnings",
    )
    parser = argparse.ArgumentParser(
        prog="imagine-bot",
        description=_paragraphs("Self-hosted Stable Diffusion bot for Discord.", DEFAULT_MODEL),
        epilog="examples:\n"
        '  imagine-bot generate "a lighthouse at dusk, watercolour" --out lighthouse.png\n'
        '  imagine-bot generate --model builtin:tiny "a robot" --out robot.png   # offline\n'
        "  DISCORD_TOKEN=... imagine-bot doctor --config config.toml\n"
        "  DISCORD_TOKEN=... imagine-bot run --config config.toml\n"
        "`imagine-bot COMMAND --help` says more; the docs are in docs/ (docs/setup.md first).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log debug messages and the libraries' warnings",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = _sub(
        sub,
        "run",
        "run the Discord bot",
        ["It migrates the database, loads the models, then connects.", TOKEN, DEFAULT_MODEL],
        [
            "export DISCORD_TOKEN='...'",
            "imagine-bot run --config config.toml",
            "imagine-bot --config config.toml        # the same",
        ],
        common,
    )
    run.add_argument("--config", default=DEFAULT_CONFIG, help="TOML config (default: %(default)s)")

    doc = _sub(
        sub,
        "doctor",
        "check a set-up and say what to fix (changes nothing)",
        [
            "One line per check (config, state folder, database, models, token, servers, "
            "channel permissions), ok or FIX; exit code 0 when all pass.",
            TOKEN,
        ],
        ["DISCORD_TOKEN=... imagine-bot doctor --config config.toml"],
        common,
    )
    doc.add_argument("--config", default=DEFAULT_CONFIG, help="TOML config (default: %(default)s)")

    gen = _sub(
        sub,
        "generate",
        "make images once, without Discord",
        [DEFAULT_MODEL],
        [
            'imagine-bot generate "a lighthouse at dusk, watercolour" --seed 7 --out a.png',
            'imagine-bot generate "a robot" --count 4 --ar 16:9 --out robot.png',
            'imagine-bot generate "in oil" --image a.png --strength 0.6 --out oil.png',
            'imagine-bot generate --model builtin:tiny "a test" --out t.png   # offline, noise',
        ],
        common,
    )
    gen.add_argument("prompt")
    gen.add_argument("--config", help=ONE_SHOT_CONFIG)
    gen.add_argument(
        "--model",
        help="a configured model's name, or a hub id (org/name), folder, .safetensors file or "
        "builtin:tiny (default: the config's default model)",
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
    gen.add_argument(
        "--image",
        action="append",
        help="a PNG, JPEG or WebP: on a model that edits (FLUX.1 Kontext, Qwen-Image-Edit, "
        "FLUX.2 klein) a picture to change as the prompt says (again for more pictures); "
        "on others one to start from (image-to-image)",
    )
    gen.add_argument(
        "--strength", type=float, help="with --image: how much to change it, 0.05-1 (0.6)"
    )
    gen.add_argument("--count", type=int, default=1, help="images to make (default 1)")
    gen.add_argument(
        "--fast", action="store_true", help="through the model's step cache ([models] cache)"
    )
    gen.add_argument(
        "--fix",
        choices=list(FIX_CHOICES),
        help="fix the faces, hands or both once made, as ADetailer does ([fix] detectors)",
    )
    gen.add_argument("--detector", help="with --fix: the face detector ([fix] detector)")
    gen.add_argument(
        "--hands-detector", help="with --fix: the hand detector ([fix] hands_detector)"
    )
    gen.add_argument(
        "--out", default="imagine.png", help="output .png or .jpg (default: %(default)s)"
    )

    desc = _sub(
        sub,
        "describe",
        "four candidate prompts for a picture",
        [
            "The captioning model is [describe] model (Florence-2 by default), loaded alone; "
            "with --tags, the tagger of [describe] tagger (a WD tagger), for danbooru-tag "
            "prompts."
        ],
        [
            "imagine-bot describe photo.png",
            "imagine-bot describe photo.png --model builtin:tiny-florence2",
            "imagine-bot describe --tags art.png --model p1atdev/wd-swinv2-tagger-v3-hf",
        ],
        common,
    )
    desc.add_argument("image", help="a PNG, JPEG or WebP")
    desc.add_argument("--config", help=ONE_SHOT_CONFIG)
    desc.add_argument(
        "--tags",
        action="store_true",
        help="danbooru-tag prompts from the tagger ([describe] tagger) instead of sentences",
    )
    desc.add_argument(
        "--model",
        help="the image-to-text model (with --tags, the tagger): a hub id, a folder, "
        "builtin:tiny-florence2 or builtin:tiny-tagger",
    )
    desc.add_argument("--device", help="auto, cuda, mps or cpu (overrides the config)")

    up = _sub(
        sub,
        "upscale",
        "an image made by imagine-bot, at twice its size",
        [
            "Its prompt, seed and model come from the image's parameters (PNG text or JPEG "
            "EXIF, as A1111 writes them)."
        ],
        [
            "imagine-bot upscale lighthouse.png              # writes lighthouse-upscaled.png",
            "imagine-bot upscale robot.png --strength 0.2 --out big.png",
        ],
        common,
    )
    up.add_argument("image", help="a PNG made by imagine-bot (or A1111): its prompt and seed")
    up.add_argument("--config", help=ONE_SHOT_CONFIG)
    up.add_argument(
        "--model",
        help="a configured model's name, or a hub id (org/name), folder, .safetensors file or "
        "builtin:tiny (default: the model the image names, by its name or its Model hash)",
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
    gan = up.add_mutually_exclusive_group()
    gan.add_argument(
        "--gan", action="store_true", help="enlarge with the GAN upscaler, then refine (creative)"
    )
    gan.add_argument(
        "--subtle", action="store_true", help="enlarge with the GAN upscaler alone (subtle)"
    )
    up.add_argument("--upscaler", help="the GAN upscaler file (default: [upscale] model)")
    _canvas_parsers(sub, common)
    return parser


def _canvas_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """`zoom`, `pan`, `inpaint` and `fix`: a picture made anew around or inside itself."""
    zoom = _sub(
        sub,
        "zoom",
        "zoom out: the picture in the middle of a larger canvas",
        ["The border is made anew from the picture's own prompt (or --prompt)."],
        ["imagine-bot zoom kite.png --factor 2      # writes kite-zoom.png"],
        common,
    )
    pan_ = _sub(
        sub,
        "pan",
        "extend the picture on one side",
        ["The new strip is made from the picture's own prompt (or --prompt)."],
        ["imagine-bot pan kite.png --direction left  # writes kite-pan.png"],
        common,
    )
    inpaint = _sub(
        sub,
        "inpaint",
        "make part of the picture anew",
        ["The part is a mask picture (white: changes) or words the region model finds."],
        [
            'imagine-bot inpaint kite.png "a red cap" --mask hat.png',
            'imagine-bot inpaint kite.png "a red cap" --region "the hat" --only-masked 32',
        ],
        common,
    )
    fix = _sub(
        sub,
        "fix",
        "fix the faces in a picture",
        [
            "Each face the detector finds ([fix] detector, or --detector) is made again at a",
            'low strength ("Only masked"); the rest of the picture is kept as it is.',
        ],
        ["imagine-bot fix portrait.png              # writes portrait-fix.png"],
        common,
    )
    fix.add_argument("image", help="a PNG, JPEG or WebP (its parameters, if any, are used)")
    fix.add_argument("--detector", help="the face detector, a hub id or folder ([fix] detector)")
    fix.add_argument("--threshold", type=float, help="the score a face needs, 0 to 1 (0.5)")
    for name, text in (
        ("--config", ONE_SHOT_CONFIG),
        ("--model", "a configured model's name, or a hub id or folder"),
        ("--device", "auto, cuda, mps or cpu (overrides the config)"),
        ("--prompt", "the prompt (default: the picture's own)"),
        ("--out", "output .png or .jpg (default: the input's name with -fix.png)"),
    ):
        fix.add_argument(name, help=text)
    fix.add_argument("--seed", type=int, help="seed (random when omitted)")
    for cmd in (zoom, pan_, inpaint):
        cmd.add_argument("image", help="a PNG, JPEG or WebP (its parameters, if any, are used)")
    zoom.add_argument("--factor", type=float, default=2.0, help="1.1 to 4 (default: 2)")
    pan_.add_argument("--direction", required=True, choices=["left", "right", "up", "down"])
    inpaint.add_argument("prompt", help="what the masked area should show")
    where = inpaint.add_mutually_exclusive_group(required=True)
    where.add_argument("--mask", help="a mask picture: white where the picture changes")
    where.add_argument("--region", help='the part to change, in words ("the hat")')
    inpaint.add_argument(
        "--only-masked",
        type=int,
        metavar="PADDING",
        help="inpaint only the area around the mask, this many pixels wider, at full size",
    )
    for cmd in (zoom, pan_, inpaint):
        cmd.add_argument("--config", help=ONE_SHOT_CONFIG)
        cmd.add_argument("--model", help="a configured model's name, or a hub id or folder")
        cmd.add_argument("--device", help="auto, cuda, mps or cpu (overrides the config)")
        if cmd is not inpaint:
            cmd.add_argument("--prompt", help="the prompt (default: the picture's own)")
        cmd.add_argument("--seed", type=int, help="seed (random when omitted)")
        cmd.add_argument("--steps", type=int, help="denoising steps")
        cmd.add_argument("--guidance", type=float, help="CFG scale")
        cmd.add_argument("--strength", type=float, help="how much the masked area changes (1)")
        cmd.add_argument("--mask-blur", type=int, help="the seam's blur in pixels (4)")
        cmd.add_argument(
            "--out", help="output .png or .jpg (default: the input's name with -zoom.png...)"
        )


def default_to_run(argv: Sequence[str]) -> list[str]:
    """`imagine-bot --config x.toml` means `imagine-bot run --config x.toml`."""
    args = list(argv)
    commands = ("run", "generate", "upscale", "describe", "zoom", "pan", "inpaint", "fix")
    commands += ("doctor",)
    commands += ("-h", "--help", "--version")
    if any(a in commands for a in args):
        return args
    if not any(a == "--config" or a.startswith("--config=") for a in args):
        return args  # nothing to guess: argparse explains the usage
    first = next((i for i, a in enumerate(args) if a not in ("-v", "--verbose")), len(args))
    return [*args[:first], "run", *args[first:]]
