"""Damaged model files at start-up: the builtin model is built again, other models are named.

A download cut off, a full disk or a stray edit leaves a model folder that diffusers cannot
load; the operator must learn which folder, not only a library's error. Only `builtin:tiny`
can be rebuilt here (real models come from the hub, which these machines cannot reach).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch

from engine.config import EngineConfig
from engine.loader import load_model
from engine.tiny import builtin_folder

WEIGHTS = Path("unet") / "diffusion_pytorch_model.safetensors"


def test_a_damaged_builtin_model_is_built_again(
    tmp_path: Path, model_cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(builtin_folder("builtin:tiny", model_cache).parent, cache)
    damaged = builtin_folder("builtin:tiny", cache)
    (damaged / WEIGHTS).write_bytes(b"\0" * 100)  # a cut-off file

    with caplog.at_level(logging.WARNING, logger="engine.loader"):
        loaded = load_model(EngineConfig(model="builtin:tiny", cache_dir=cache))
    assert f"in {damaged} cannot be loaded" in caplog.text and "building it again" in caplog.text

    intact = load_model(EngineConfig(model="builtin:tiny", cache_dir=model_cache))
    rebuilt, original = loaded.pipe.unet.state_dict(), intact.pipe.unet.state_dict()
    assert rebuilt.keys() == original.keys()
    assert all(torch.equal(rebuilt[k], original[k]) for k in original)


def test_a_damaged_local_model_names_its_folder(tmp_path: Path, model_cache: Path) -> None:
    local = tmp_path / "my-model"
    shutil.copytree(builtin_folder("builtin:tiny", model_cache), local)
    (local / WEIGHTS).write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="cannot be loaded") as caught:
        load_model(EngineConfig(model=str(local), cache_dir=tmp_path / "cache"))
    assert f"the model folder {local} cannot be loaded" in str(caught.value)
    assert "model_index.json" in str(caught.value)
    assert (local / WEIGHTS).read_bytes() == b"not a safetensors file"  # never deleted


# Run in a child process: huggingface_hub reads HF_ENDPOINT when it is imported.
_LOAD_EACH = """
import sys
from engine.config import EngineConfig, ModelSpec
from engine.loader import load_model

for source in sys.argv[1:]:
    try:
        load_model(EngineConfig(cache_dir=None), ModelSpec("m", source))
    except Exception as exc:
        print(f"{source} => {exc}")
"""


async def test_a_model_that_cannot_load_names_the_cause(tmp_path: Path) -> None:
    """A real huggingface_hub client against a stand-in hub that answers as the real one
    does for a missing and a gated repository; a missing local folder; downloads turned off."""
    import asyncio
    import os
    import sys

    from aiohttp import web

    async def hub(request: web.Request) -> web.Response:
        if "gated" in request.path:
            headers = {"X-Error-Code": "GatedRepo", "X-Error-Message": "Access is restricted"}
            return web.Response(status=403, headers=headers)
        headers = {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"}
        return web.Response(status=404, headers=headers)

    (tmp_path / "model.safetensors").write_bytes(b"\0" * 16)  # a single-file checkpoint
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hub)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HOME": str(tmp_path)}
    try:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _LOAD_EACH,
            "someone/missing",
            "someone/gated-model",
            str(tmp_path / "no-such-folder"),
            str(tmp_path / "model.safetensors"),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await asyncio.wait_for(child.communicate(), 120)
        offline = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _LOAD_EACH,
            "someone/not-cached",
            env={**env, "HF_HUB_OFFLINE": "1"},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out_offline, _ = await asyncio.wait_for(offline.communicate(), 120)
    finally:
        await runner.cleanup()
    said = dict(line.split(" => ", 1) for line in (out + out_offline).decode().splitlines())
    assert said["someone/missing"].startswith("there is no model someone/missing on the")
    assert (
        "is gated: accept its licence on https://huggingface.co/someone/gated-model"
        in (said["someone/gated-model"])
    )
    assert said[str(tmp_path / "no-such-folder")].endswith(
        "does not exist (a hub id looks like org/name)"
    )
    assert "not in the local cache and downloads are off" in said["someone/not-cached"]
    assert (
        "cannot be read (Error while deserializing header"
        in (said[str(tmp_path / "model.safetensors")])
    )
    assert all("\n" not in text for text in said.values())


def test_a_cache_dir_given_as_text_works_like_a_path(model_cache: Path) -> None:
    """Callers building an `EngineConfig` by hand may pass the folder as a string."""
    config = EngineConfig(model="builtin:tiny", cache_dir=str(model_cache))  # type: ignore[arg-type]
    assert config.cache_dir == model_cache
    assert load_model(config).pipe is not None
    assert EngineConfig(cache_dir="").cache_dir is None  # type: ignore[arg-type]
