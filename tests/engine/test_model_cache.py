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
