"""`imagine-bot generate` as a user runs it: a real process writing real PNG files."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from engine import read_parameters


def run_cli(*args: str, cache: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("imagine-bot")
    command = [exe] if exe else [sys.executable, "-m", "bot"]
    env = {**os.environ, "IMAGINE_BOT_CACHE": str(cache)}
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=240
    )


def test_generate_writes_pngs_with_the_seed(model_cache: Path, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    done = run_cli(
        "generate",
        "--model",
        "builtin:tiny",
        "a robot painting",
        "--seed",
        "7",
        "--count",
        "2",
        "--out",
        "out/robot.png",
        cache=model_cache,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines == [
        "wrote out/robot-1.png (64x64, seed 7)",
        "wrote out/robot-2.png (64x64, seed 8)",
    ]
    for name, seed in (("robot-1.png", 7), ("robot-2.png", 8)):
        params = read_parameters((tmp_path / "out" / name).read_bytes())
        assert params is not None
        assert (params.seed, params.prompt, params.model) == (
            seed,
            "a robot painting",
            "tiny",  # the model's name: `[engine] model`'s last part
        )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--size", "65x64"], "Width must be a multiple of 8"),
        (["--size", "big"], "--size must look like 512x768"),
        (["--fast"], "has no fast mode"),  # builtin:tiny alone has no step cache
        (["--model", "builtin:nope"], "Could not load model"),
    ],
)
def test_bad_options_end_with_one_clear_line(
    model_cache: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    done = run_cli(
        "generate", "--model", "builtin:tiny", "x", *args, cache=model_cache, cwd=tmp_path
    )
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert not list(tmp_path.glob("*.png"))


def test_a_bad_config_file_is_named_with_the_key_to_fix(model_cache: Path, tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text('[engine]\nmodle = "builtin:tiny"\nmax_steps = "many"\n')
    done = run_cli("generate", "--config", "bad.toml", "x", cache=model_cache, cwd=tmp_path)
    assert done.returncode == 2
    assert "unknown key [engine] modle (did you mean 'model'?)" in done.stderr
    assert "[engine] max_steps must be a whole number" in done.stderr
    assert "Traceback" not in done.stderr


def test_image_to_image_and_upscale_from_the_command_line(
    model_cache: Path, tmp_path: Path
) -> None:
    """generate --ar, then upscale (with the model the image names): the upscale is the
    stock image-to-image pipeline over the image at twice its size, with its own prompt and
    seed (`--image` takes the same path; its refusals are tested below, before any model
    loads)."""
    import io

    import numpy as np
    import torch
    from PIL import Image

    from engine import EngineConfig
    from engine.loader import image_to_image, load_model

    tiny = ("--model", "builtin:tiny")
    done = run_cli(
        "generate", *tiny, "a kite", "--seed", "3", "--steps", "4", "--ar", "3:4",
        "--size", "", "--out", "kite.png", cache=model_cache, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "wrote kite.png (64x88, seed 3)"  # 3:4 at 64x64's area

    # No --model and no config: the model kite.png names (`Model: tiny`), not the default.
    done = run_cli("upscale", "kite.png", cache=model_cache, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "upscaling with model tiny (kite.png was made with it)" in done.stderr
    assert done.stdout.strip() == "wrote kite-upscaled.png (128x176, seed 3)"
    big = (tmp_path / "kite-upscaled.png").read_bytes()
    params = read_parameters(big)
    assert params is not None and (params.prompt, params.seed) == ("a kite", 3)
    assert params.denoising_strength == 0.35
    assert ("Hires upscale", "2") in params.extra and ("Source", "kite.png") in params.extra

    model = load_model(EngineConfig(model="builtin:tiny", cache_dir=model_cache))
    with Image.open(tmp_path / "kite.png") as small:
        init = small.convert("RGB").resize((128, 176), Image.Resampling.LANCZOS)
    stock = image_to_image(model)(
        prompt="a kite",
        image=init,
        strength=0.35,
        num_inference_steps=4,
        guidance_scale=7.0,
        generator=[torch.Generator("cpu").manual_seed(3)],
    ).images[0]
    with Image.open(io.BytesIO(big)) as ours:
        diff = np.abs(np.asarray(ours.convert("RGB"), np.int16) - np.asarray(stock, np.int16))
    assert diff.max() <= 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generate", "x", "--image", "notes.txt"], "not a picture (PNG, JPEG or WebP)"),
        (["generate", "x", "--strength", "0.5"], "only when starting from an image"),
        (["generate", "x", "--ar", "16x9"], "must look like 16:9"),
        (["upscale", "notes.png"], "no generation parameters"),
        (["generate", "x", "--out", "."], "is a folder"),
        (["generate", "x", "--out", "notes.txt/x.png"], "notes.txt is not a folder"),
        (["generate", "x", "--out", "new/x.png"], "the folder new does not exist"),
        (["generate", "x", "--out", "/proc/x.png"], "cannot write in /proc"),
        (["generate", "x", "--out", "x.gif"], "name a .png or .jpg file"),
        (["upscale", "notes.png", "--out", "new/big.png"], "the folder new does not exist"),
        (["describe", "notes.txt"], "not a picture (PNG, JPEG or WebP)"),
    ],
)
def test_bad_pictures_and_options_get_one_line(
    args: list[str], message: str, model_cache: Path, tmp_path: Path
) -> None:
    """Refused with one line before any model loads, creating nothing."""
    from PIL import Image

    (tmp_path / "notes.txt").write_text("not a picture")
    Image.new("RGB", (64, 64)).save(tmp_path / "notes.png")  # a picture without parameters
    before = sorted(tmp_path.iterdir())
    done = run_cli(*args, "--model", "builtin:tiny", cache=model_cache, cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert message in done.stderr.strip().splitlines()[-1]
    assert "generating" not in done.stderr  # refused before the model loads
    assert sorted(tmp_path.iterdir()) == before


def test_edit_by_instruction_and_describe_from_the_command_line(
    model_cache: Path, tmp_path: Path
) -> None:
    """`generate --image` on a model that edits runs its edit pipeline (the stock one's
    pixels, the picture's aspect ratio at the model's area, the source in the PNG), `--image`
    again for more pictures; `describe` prints four prompts, `describe --tags` the tagger's
    top tags (and says in one line when no tagger is set)."""
    import numpy as np
    import torch
    from PIL import Image

    from engine import EngineConfig
    from engine.loader import load_model
    from engine.torch_ops import picture_hash
    from testkit.tagger import top_tags

    rng = np.random.default_rng(5)
    for name in ("in.png", "ref.png"):
        Image.fromarray(rng.integers(0, 255, (48, 80, 3), dtype=np.uint8)).save(tmp_path / name)
    kontext = "builtin:tiny-flux-kontext"
    done = run_cli(
        "generate", "--model", kontext, "--image", "in.png", "make it blue", "--seed", "3",
        "--steps", "2", "--out", "blue.png", cache=model_cache, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "wrote blue.png (112x64, seed 3)"  # 5:3, as in.png
    params = read_parameters((tmp_path / "blue.png").read_bytes())
    assert params is not None and (params.prompt, params.model) == (
        "make it blue",
        "tiny-flux-kontext",
    )
    with Image.open(tmp_path / "in.png") as picture:  # fitted as validation fits it
        source = picture.convert("RGB").resize((80, 48))
    assert ("Source", "in.png") in params.extra
    assert ("Source hash", picture_hash(source)) in params.extra
    model = load_model(EngineConfig(model=kontext, cache_dir=model_cache))
    stock = model.pipe(
        image=[source], prompt=["make it blue"], num_inference_steps=2, guidance_scale=2.5,
        width=112, height=64, max_area=112 * 64, _auto_resize=False,
        generator=[torch.Generator("cpu").manual_seed(3)],
    ).images[0]  # fmt: skip
    with Image.open(tmp_path / "blue.png") as ours:
        diff = np.abs(np.asarray(ours.convert("RGB"), np.int16) - np.asarray(stock, np.int16))
    assert diff.max() <= 1

    done = run_cli(
        "generate", "--model", "builtin:tiny-flux2-klein", "--image", "in.png", "--image",
        "ref.png", "put the cat in the room", "--steps", "2", "--out", "both.png",
        cache=model_cache, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    both = read_parameters((tmp_path / "both.png").read_bytes())
    assert both is not None and ("Source", "in.png, ref.png") in both.extra
    assert len(dict(both.extra)["Source hash"].split()) == 2

    done = run_cli(
        "describe", "in.png", "--model", "builtin:tiny-florence2", cache=model_cache, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    prompts = done.stdout.strip().splitlines()
    assert len(prompts) == len(set(prompts)) == 4

    done = run_cli(
        "describe", "--tags", "in.png", "--model", "builtin:tiny-tagger",
        cache=model_cache, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    with Image.open(tmp_path / "in.png") as picture:
        kept = top_tags(model_cache, picture)  # the tagger's own answer, from transformers
    assert done.stdout.strip().splitlines()[0] == ", ".join(kept)
    assert len(done.stdout.strip().splitlines()) == len(
        {-(-len(kept) * n // 4) for n in range(1, 5)}
    )
    (tmp_path / "tags.toml").write_text('[describe]\nmodel = ""\n')
    done = run_cli(
        "describe", "--tags", "in.png", "--config", "tags.toml", cache=model_cache, cwd=tmp_path
    )
    assert done.returncode == 2
    assert "describing as tags is off: [describe] tagger is empty (or --model)" in done.stderr


def test_jpeg_out_and_upscale_with_the_model_the_image_names(
    model_cache: Path, tmp_path: Path
) -> None:
    """`--out x.jpg` writes a JPEG with its parameters where A1111 puts them (EXIF
    UserComment). `upscale` without `--model` uses the configured model the image names, or,
    when the config renamed it, the one with its `Model hash`, and says which in one line."""
    from PIL import Image

    # A copy of the tiny model as a folder: its own Model hash (the hash reads its configs).
    mine = tmp_path / "mine"
    shutil.copytree(next(model_cache.glob("builtin-tiny-v*")), mine)
    index = mine / "model_index.json"
    index.write_text(json.dumps(json.loads(index.read_text()), indent=4))
    models = '[models.tiny]\nsource = "builtin:tiny"\n[models.{}]\nsource = "mine"\n'
    (tmp_path / "a.toml").write_text(models.format("mine"))
    done = run_cli(
        "generate", "--config", "a.toml", "--model", "mine", "an owl", "--seed", "3",
        "--steps", "2", "--out", "owl.jpg", cache=model_cache, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    with Image.open(tmp_path / "owl.jpg") as jpeg:
        assert jpeg.format == "JPEG"
    owl = read_parameters((tmp_path / "owl.jpg").read_bytes())
    assert owl is not None and (owl.prompt, owl.seed, owl.model) == ("an owl", 3, "mine")

    done = run_cli("upscale", "--config", "a.toml", "owl.jpg", cache=model_cache, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "upscaling with model mine (owl.jpg was made with it)" in done.stderr
    assert done.stdout.strip() == "wrote owl-upscaled.png (128x128, seed 3)"
    big = read_parameters((tmp_path / "owl-upscaled.png").read_bytes())
    assert big is not None and big.model == "mine"  # not the default, tiny

    (tmp_path / "b.toml").write_text(models.format("renamed"))
    done = run_cli(
        "upscale", "--config", "b.toml", "owl.jpg", "--out", "owl-2.png",
        cache=model_cache, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    made = f"owl.jpg was made with 'mine', Model hash {dict(owl.extra)['Model hash']}"
    assert f"upscaling with model renamed ({made})" in done.stderr
    big = read_parameters((tmp_path / "owl-2.png").read_bytes())
    assert big is not None and big.model == "renamed"


def test_version_is_the_installed_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    import tomllib
    from importlib.metadata import version

    from bot.cli import main

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert version("imagine-bot") == project["project"]["version"]  # installed from this tree
    assert capsys.readouterr().out.strip() == f"imagine-bot {project['project']['version']}"


def test_ctrl_c_stops_generate_within_a_step(model_cache: Path, tmp_path: Path) -> None:
    """50 steps at 256x256 take over a minute here; Ctrl-C must end it at the next step."""
    import signal

    exe = shutil.which("imagine-bot")
    command = [exe] if exe else [sys.executable, "-m", "bot"]
    args = ["generate", "--model", "builtin:tiny", "a slow fox", "--steps", "50"]
    child = subprocess.Popen(
        [*command, *args, "--size", "256x256", "--out", "fox.png"],
        cwd=tmp_path,
        env={**os.environ, "IMAGINE_BOT_CACHE": str(model_cache)},
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stderr is not None
    for line in child.stderr:  # blocks until the command says it is generating
        if line.startswith("generating"):
            break
    child.send_signal(signal.SIGINT)
    try:
        rest = child.communicate(timeout=40)[1]
    finally:
        child.kill()
    assert child.returncode == 130
    assert "cancelled" in rest and "Traceback" not in rest
    assert not (tmp_path / "fox.png").exists()


def _hub_cache(hf_home: Path, repo: str, model_cache: Path) -> None:
    """The tiny model as the Hugging Face cache holds a downloaded hub model
    (`$HF_HOME/hub/models--org--name/snapshots/<commit>/`, `refs/main` naming the commit)."""
    folder = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(next(model_cache.glob("builtin-tiny-v*")), folder / "snapshots" / commit)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)


def _silent_server() -> socket.socket:
    """A port that takes connections and never answers: a firewall dropping the packets."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    return server


def test_an_unreachable_hub_is_one_fast_line(model_cache: Path, tmp_path: Path) -> None:
    """The hub cannot be reached (the connection refused, or taken and never answered, as
    behind a firewall): a model not in the cache fails in one line at once, a cached one loads
    from the cache. Was 30 s and 26 lines (huggingface_hub's five retries with back-off, each
    logged twice, and a deprecation warning), minutes when nothing answers. `HF_ENDPOINT`
    points at this machine, so the test never reaches the real hub, network or not. Times are
    compared with the same command with downloads off (no hub at all), which takes what this
    machine's load makes it take."""
    import time

    silent = _silent_server()
    with contextlib.closing(silent), socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
        env["IMAGINE_BOT_CACHE"] = str(model_cache)
        exe = shutil.which("imagine-bot")
        command = [exe] if exe else [sys.executable, "-m", "bot"]
        endpoints = {
            hub: f"http://127.0.0.1:{sock.getsockname()[1]}"
            for hub, sock in (("refused", closed), ("silent", silent))
        }

        def generate(
            hub: str, *args: str, hf_home: Path
        ) -> tuple[float, subprocess.CompletedProcess[str]]:
            where = {"HF_HUB_OFFLINE": "1"} if hub == "off" else {"HF_ENDPOINT": endpoints[hub]}
            started = time.monotonic()
            done = subprocess.run(
                [*command, "generate", "a kite", "--steps", "1", *args],
                capture_output=True,
                text=True,
                cwd=tmp_path,
                env={**env, **where, "HF_HOME": str(hf_home)},
                timeout=240,
            )
            return time.monotonic() - started, done

        model = ("--model", "test-org/tiny")
        offline, done = generate("off", *model, hf_home=tmp_path / "empty")
        assert done.returncode == 2 and "downloads are off" in done.stderr, done.stderr
        for hub, probe in (("refused", 0), ("silent", 5)):  # the probe waits 5 s at most
            took, done = generate(hub, *model, hf_home=tmp_path / "empty")
            assert done.returncode == 2 and "Traceback" not in done.stderr
            lines = done.stderr.strip().splitlines()
            assert len(lines) == 2 and "loading test-org/tiny" in lines[0], done.stderr
            assert lines[-1].startswith(
                "imagine-bot: Could not load model 'tiny': the model test-org/tiny is not in the "
                "local cache and the Hugging Face hub cannot be reached ("
            )
            assert "HF_HUB_OFFLINE=1" in lines[-1]
            assert took - offline < probe + 8, (hub, took, offline)

        _hub_cache(tmp_path / "hf", "test-org/tiny", model_cache)
        _, done = generate("refused", *model, "--out", "k.png", hf_home=tmp_path / "hf")
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().startswith("wrote k.png"), done.stderr
        assert "from the local cache" in done.stderr and "Retry" not in done.stderr
        assert "Warning" not in done.stderr  # the libraries' warnings only with -v

        # -v after the subcommand: the libraries' warnings are shown, as log lines.
        _, done = generate("silent", "-v", *model, hf_home=tmp_path / "hf")
        assert done.returncode == 0, done.stderr
        assert "WARNING py.warnings" in done.stderr, done.stderr


def test_a_model_name_that_is_not_configured_is_named(model_cache: Path, tmp_path: Path) -> None:
    """`--model nosuchmodel` was taken for a hub id and blamed on the network after 30 s."""
    done = run_cli("generate", "--model", "nosuchmodel", "x", cache=model_cache, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "imagine-bot: options: no configured model called 'nosuchmodel' (configured: "
        "sd-turbo); --model also takes a hub id (org/name), a folder, a .safetensors file or "
        "builtin:tiny"
    ]


def test_help_names_the_default_model_the_token_and_examples(
    capsys: pytest.CaptureFixture[str], model_cache: Path, tmp_path: Path
) -> None:
    """What a newcomer reads first: the default model and what it downloads, where the token
    comes from, examples; `--config` of generate and upscale described alike; `-v` after the
    subcommand as before it."""
    import re

    from bot.cli import main
    from engine import EngineConfig

    def help_of(*command: str) -> str:
        with pytest.raises(SystemExit) as done:
            main([*command, "--help"])
        assert done.value.code == 0
        return " ".join(capsys.readouterr().out.split())  # as one line, however it wraps

    for command in ((), ("run",), ("generate",)):
        text = help_of(*command)
        assert f"by default {EngineConfig().model} (SD-Turbo: a 5.2 GB download" in text, command
        assert "builtin:tiny needs no download" in text and " examples: " in text, command
    for command in ("run", "doctor"):
        text = help_of(command)
        assert "environment variable DISCORD_TOKEN" in text and " examples: " in text, command
    described = {
        command: re.search(r"--config CONFIG (.+?\)) --model", help_of(command))[1]
        for command in ("generate", "upscale")
    }
    assert described["generate"] == described["upscale"], described

    done = run_cli("doctor", "--config", "missing.toml", "-v", cache=model_cache, cwd=tmp_path)
    assert done.returncode == 1, done.stderr  # ran: its config check says what to fix
    assert "FIX  config: missing.toml: file not found" in done.stdout


def test_zoom_pan_and_inpaint_from_the_command_line(model_cache: Path, tmp_path: Path) -> None:
    """zoom 2x: the picture at half its size in the middle of a canvas twice as wide and
    tall (the model's area), its centre kept exactly within the blend; pan left: a wider
    picture whose right part is the source; inpaint with a mask, or a region in words (the
    tiny CLIPSeg): the picture changes inside the mask more than outside, and the PNG
    records A1111's inpaint fields."""
    import numpy as np
    from PIL import Image, ImageOps

    from engine import EngineConfig
    from engine.canvas import pan, region_mask, zoom_out
    from engine.config import Limits
    from engine.inpaint import blurred, fitted_mask
    from engine.vision import Helpers

    tiny = ("--model", "builtin:tiny")
    done = run_cli(
        "generate", *tiny, "a kite", "--seed", "3", "--steps", "3", "--out", "kite.png",
        cache=model_cache, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    with Image.open(tmp_path / "kite.png") as opened:
        kite = opened.convert("RGB")

    done = run_cli("zoom", "kite.png", "--factor", "2", cache=model_cache, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith("wrote kite-zoom.png (64x64, seed ")
    with Image.open(tmp_path / "kite-zoom.png") as opened:
        zoomed = np.asarray(opened.convert("RGB"), np.int16)
    made = zoom_out(kite, 2.0)  # validation fits canvas and mask to the model's 64x64
    canvas = np.asarray(ImageOps.fit(made.picture, (64, 64), Image.Resampling.LANCZOS), np.int16)
    kept = np.asarray(blurred(fitted_mask(made.mask, 64, 64), 4)) == 0  # beyond the blend
    assert kept[26:38, 26:38].all() and not kept[:16].any()  # the source's 32x32 middle
    assert (zoomed[kept] == canvas[kept]).all()
    assert np.abs(zoomed[:8] - canvas[:8]).mean() > 10  # a new border
    params = read_parameters((tmp_path / "kite-zoom.png").read_bytes())
    assert params is not None and params.prompt == "a kite"
    assert ("Zoom out", "2") in params.extra and ("Inpaint area", "Whole picture") in params.extra

    done = run_cli("pan", "kite.png", "--direction", "left", cache=model_cache, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith("wrote kite-pan.png (96x64, seed ")
    with Image.open(tmp_path / "kite-pan.png") as opened:
        panned = np.asarray(opened.convert("RGB"), np.int16)
    made = pan(kite, "left", Limits())
    kept = np.asarray(blurred(made.mask, 4)) == 0  # 96x64 already: nothing refitted
    assert kept[:, 46:].all() and not kept[:, :32].any()
    assert (panned[kept] == np.asarray(made.picture, np.int16)[kept]).all()
    assert (panned[:, 46:] == np.asarray(kite, np.int16)[:, 14:]).all()  # the source, right
    params = read_parameters((tmp_path / "kite-pan.png").read_bytes())
    assert params is not None and ("Outpainting direction", "left") in params.extra

    hat = Image.new("L", (64, 64), 0)
    hat.paste(255, (16, 0, 48, 24))
    hat.save(tmp_path / "hat.png")
    region = ("--region", "the hat", "--config", "c.toml")
    (tmp_path / "c.toml").write_text('[region]\nmodel = "builtin:tiny-clipseg"\n')
    for how, out in ((("--mask", "hat.png"), "masked.png"), (region, "region.png")):
        done = run_cli(
            "inpaint", "kite.png", *how, "a red cap", *tiny, "--out", out,
            cache=model_cache, cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        with Image.open(tmp_path / out) as opened:
            changed = np.abs(np.asarray(opened.convert("RGB"), np.int16) - np.asarray(kite))
        params = read_parameters((tmp_path / out).read_bytes())
        assert params is not None and params.prompt == "a red cap"
        assert ("Mask blur", "4") in params.extra
        if how[0] == "--mask":
            inside = np.asarray(hat) == 255
            kept = np.asarray(blurred(hat, 4)) == 0  # the blur reaches 9 rows below the hat
            assert changed[inside].mean() > 20 and (changed[kept] == 0).all() and kept[34:].all()
        else:
            assert "region 'the hat':" in done.stderr
            # The random-weight CLIPSeg's own mask, computed here as the engine does: the
            # pixels it keeps (whatever their share) are the picture's, exactly.
            config = EngineConfig(cache_dir=model_cache, region_model="builtin:tiny-clipseg")
            helpers = Helpers(config)
            mask = region_mask(helpers.segment(kite, "the hat"), kite.size)
            assert mask is not None
            kept = np.asarray(blurred(mask, 4)) == 0
            assert changed.mean() > 0.5 and (changed[kept] == 0).all()


def test_fix_faces_from_the_command_line(model_cache: Path, tmp_path: Path) -> None:
    """`fix` with the tiny random-weight face detector: the faces it finds are made again
    ("Only masked", ADetailer's strength), every pixel beyond their masks' blur is the
    picture's own; a threshold no face passes, or no detector at all, is one line."""
    import numpy as np
    from PIL import Image

    from engine import EngineConfig
    from engine.canvas import fix_canvas
    from engine.derived import FIX_STRENGTH
    from engine.inpaint import blurred
    from engine.vision import Helpers

    tiny = ("--model", "builtin:tiny")
    done = run_cli(
        "generate", *tiny, "a face", "--seed", "3", "--steps", "3", "--out", "face.png",
        cache=model_cache, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    detector = ("--detector", "builtin:tiny-face-detector")
    done = run_cli("fix", "face.png", *detector, *tiny, cache=model_cache, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "faces found: 1" in done.stderr
    assert done.stdout.strip().startswith("wrote face-fix.png (64x64, seed ")
    with Image.open(tmp_path / "face.png") as a, Image.open(tmp_path / "face-fix.png") as b:
        face, fixed = a.convert("RGB"), np.asarray(b.convert("RGB"), np.int16)
    # The detector's boxes, found here as the engine finds them.
    config = EngineConfig(cache_dir=model_cache, fix_detector="builtin:tiny-face-detector")
    mask = fix_canvas(face, Helpers(config).detect(face)).mask
    kept = np.asarray(blurred(mask, 4)) == 0
    inside = np.asarray(mask) > 0
    own = np.asarray(face, np.int16)
    assert kept.sum() > 1000 and (fixed[kept] == own[kept]).all()
    assert np.abs(fixed[inside] - own[inside]).mean() > 3
    params = read_parameters((tmp_path / "face-fix.png").read_bytes())
    assert params is not None and params.prompt == "a face"
    assert params.denoising_strength == FIX_STRENGTH
    assert ("ADetailer model", "tiny-face-detector") in params.extra
    for args, message in (
        ([*detector, "--threshold", "0.95"], "No faces were found in the picture"),
        ([], "no face detector: set [fix] detector or give --detector"),
        ([*detector, "--threshold", "2"], "fix threshold must be between 0 and 1"),
    ):
        done = run_cli("fix", "face.png", *args, *tiny, cache=model_cache, cwd=tmp_path)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert message in done.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "face-fix-1.png").exists()

    # `generate --fix faces`: the same image made, then its face fixed, in one run.
    made = ("a face", "--seed", "3", "--steps", "3", "--out", "fixed.png")
    done = run_cli("generate", *tiny, *made, "--fix", "faces", *detector,
                   cache=model_cache, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "wrote fixed.png (64x64, seed 3) (faces fixed)"
    with Image.open(tmp_path / "fixed.png") as b:
        at_once = np.asarray(b.convert("RGB"), np.int16)
    assert (at_once[kept] == own[kept]).all() and np.abs(at_once - own).max() > 3
    params = read_parameters((tmp_path / "fixed.png").read_bytes())
    assert params is not None and params.denoising_strength is None  # the image's own
    assert ("ADetailer model", "tiny-face-detector") in params.extra
    assert ("ADetailer denoising strength", f"{FIX_STRENGTH:g}") in params.extra
    done = run_cli("generate", *tiny, *made, "--fix", "hands", cache=model_cache, cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "no hand detector is configured" in done.stderr.strip().splitlines()[-1]


def test_bad_canvas_options_get_one_line(model_cache: Path, tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (64, 64)).save(tmp_path / "plain.png")
    Image.new("L", (64, 64)).save(tmp_path / "black.png")
    for args, message in (
        (["zoom", "plain.png"], "has no parameters: give --prompt"),
        (["zoom", "plain.png", "--prompt", "x", "--factor", "9"], "Zoom out by 1.1 to 4 times"),
        (["inpaint", "plain.png", "x", "--mask", "black.png"], "The mask is all black"),
        (["upscale", "plain.png", "--gan"], "no generation parameters"),
    ):
        done = run_cli(*args, "--model", "builtin:tiny", cache=model_cache, cwd=tmp_path)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert message in done.stderr.strip().splitlines()[-1]


def test_gan_upscale_subtle_and_creative(model_cache: Path, tmp_path: Path) -> None:
    """`[upscale] model` (the tiny ESRGAN, read by the real spandrel): --subtle writes the
    GAN's 4x picture with A1111's extras fields; --gan refines it by image-to-image at the
    upscale strength, recording the upscaler as A1111's hires fix does."""
    import numpy as np
    from PIL import Image

    stubs = str(Path(__file__).parents[1] / "stubs")  # spandrel without torchvision
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [stubs, os.environ.get("PYTHONPATH")]))
    try:
        tiny = ("--model", "builtin:tiny")
        (tmp_path / "c.toml").write_text('[upscale]\nmodel = "builtin:tiny-esrgan"\n')
        done = run_cli(
            "generate", *tiny, "a kite", "--seed", "3", "--steps", "3", "--out", "kite.png",
            cache=model_cache, cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        runs = (("--subtle", "subtle.png"), ("--gan", "creative.png"))
        for flag, out in runs:
            done = run_cli(
                "upscale", "kite.png", flag, "--config", "c.toml", *tiny, "--out", out,
                cache=model_cache, cwd=tmp_path,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            assert done.stdout.strip() == f"wrote {out} (256x256, seed 3)"
        subtle = read_parameters((tmp_path / "subtle.png").read_bytes())
        assert subtle is not None and subtle.denoising_strength is None
        assert ("Postprocess upscaler", "tiny-esrgan") in subtle.extra
        assert ("Postprocess upscale by", "4") in subtle.extra
        creative = read_parameters((tmp_path / "creative.png").read_bytes())
        assert creative is not None and creative.denoising_strength == 0.35
        assert ("Hires upscaler", "tiny-esrgan") in creative.extra
        with Image.open(tmp_path / "subtle.png") as a, Image.open(tmp_path / "creative.png") as b:
            differ = np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).mean()
        assert differ > 1  # the refinement changed the GAN's picture
    finally:
        os.environ["PYTHONPATH"] = os.environ["PYTHONPATH"].replace(stubs, "").strip(os.pathsep)
