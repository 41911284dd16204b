"""A model `source` that is one checkpoint file, as civitai and A1111 users download them.

The tiny model is written as an original-format (LDM/A1111) `.safetensors` by
`testkit.checkpoint`, the inverse of diffusers' conversion. The engine loads it with diffusers'
`from_single_file`, which takes its component configs from the hub repository of its family
(SD 1.5's for this one): offline, the hub cache holds that snapshot, seeded with the tiny
model's configs, so the real path runs, hub look-up and all, without a network.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import Engine, EngineConfig, EngineError, ImageRequest, ModelSpec, read_parameters
from engine.loader import load_model
from engine.model_hash import model_hash
from engine.tiny import builtin_folder
from testkit.checkpoint import SD15_CONFIG_REPO, seed_hub_configs, write_checkpoint

from .conftest import pixels


@pytest.fixture(scope="module", autouse=True)
def offline() -> Iterator[None]:
    """No hub requests, as on a machine without network (huggingface_hub reads its
    `HF_HUB_OFFLINE` once, at import, hence both)."""
    from huggingface_hub import constants

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(constants, "HF_HUB_OFFLINE", True)
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def tiny_folder(model_cache: Path) -> Path:
    return builtin_folder("builtin:tiny", model_cache)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory, tiny_folder: Path) -> Path:
    """A cache folder with `builtin:tiny` and, in its hub cache, SD 1.5's configs (the tiny's)."""
    root = tmp_path_factory.mktemp("cache")
    shutil.copytree(tiny_folder, root / tiny_folder.name)
    seed_hub_configs(tiny_folder, root / "hub", SD15_CONFIG_REPO)
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_folder: Path) -> Path:
    return write_checkpoint(tiny_folder, tmp_path_factory.mktemp("models") / "tiny.safetensors")


def _request(model: str) -> ImageRequest:
    return ImageRequest(
        "a lighthouse at dusk", seed=11, steps=3, guidance=7.0, width=64, height=64, model=model
    )


async def test_a_single_file_makes_the_same_images_as_its_folder(
    cache: Path, checkpoint: Path
) -> None:
    models = (ModelSpec("folder", "builtin:tiny"), ModelSpec("file", str(checkpoint)))
    config = EngineConfig(models=models, cache_dir=cache, max_loaded_models=2, batch_wait_ms=0)
    async with Engine(config) as engine:
        folder = await engine.generate(_request("folder"))
        file = await engine.generate(_request("file"))
        profile = engine.profile_of("file")

    assert profile.family == "sd" and profile.extra["pipeline"] == "StableDiffusionPipeline"
    assert profile.sampler == "DDIM" and profile.native_size == 64
    assert np.array_equal(pixels(file.images[0].png), pixels(folder.images[0].png))
    # A1111's "Model hash" of a single file: its SHA-256, as civitai lists it.
    params = read_parameters(file.images[0].png)
    assert params is not None and params.model == "file"
    assert ("Model hash", _sha256(checkpoint)[:10]) in params.extra


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_pickled_ckpt_of_weights_only_loads(
    cache: Path, tiny_folder: Path, tmp_path: Path
) -> None:
    ckpt = write_checkpoint(tiny_folder, tmp_path / "tiny.ckpt")
    loaded = load_model(EngineConfig(cache_dir=cache), ModelSpec("m", str(ckpt)))
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_folder / "unet", local_files_only=True)
    want, got = unet.state_dict(), loaded.pipe.unet.state_dict()
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)


def _text(path: Path, checkpoint: Path) -> None:
    path.write_text("<html>404: this is not the model you downloaded</html>\n")


def _lora(path: Path, checkpoint: Path) -> None:
    from safetensors.torch import save_file

    save_file(
        {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.ones(4, 8)}, path
    )


def _cut(path: Path, checkpoint: Path) -> None:
    data = checkpoint.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])  # a download cut off


def _unsafe_ckpt(path: Path, checkpoint: Path) -> None:
    # PyTorch Lightning checkpoints keep their hyper-parameters as an argparse.Namespace
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hparams": argparse.Namespace(lr=1)}, path)


def _not_a_checkpoint(path: Path, checkpoint: Path) -> None:
    path.write_bytes(b"\0" * 64)


@pytest.mark.parametrize(
    ("name", "make", "said"),
    [
        ("renamed.safetensors", _text, "cannot be read (Error while deserializing header"),
        ("renamed.ckpt", _text, "cannot be read (not a torch file)"),
        ("cut.safetensors", _cut, "cannot be read"),
        ("lora.safetensors", _lora, "is not a checkpoint of a model family served here"),
        (
            "trained.ckpt",
            _unsafe_ckpt,
            "is refused: besides weights it holds Python objects (argparse.Namespace)",
        ),
        ("model.bin", _not_a_checkpoint, "is a file but not a checkpoint"),
    ],
)
def test_a_file_that_is_not_a_usable_checkpoint_is_one_clear_line(
    cache: Path,
    checkpoint: Path,
    tmp_path: Path,
    name: str,
    make: Callable[[Path, Path], None],
    said: str,
) -> None:
    path = tmp_path / name
    make(path, checkpoint)
    with pytest.raises(ValueError) as caught:
        load_model(EngineConfig(cache_dir=cache), ModelSpec("m", str(path)))
    message = str(caught.value)
    assert said in message and str(path) in message and "\n" not in message
    if name.startswith("lora"):
        assert "configure it in a [loras.<name>] table" in message


def test_a_checkpoint_missing_weights_is_refused(
    cache: Path, tiny_folder: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file, save_file

    whole = write_checkpoint(tiny_folder, tmp_path / "whole.safetensors")
    weights = load_file(whole)
    del weights["first_stage_model.decoder.conv_out.weight"]
    save_file(weights, tmp_path / "partial.safetensors")
    with pytest.raises(ValueError, match=r"is incomplete: some of its weights are missing"):
        load_model(
            EngineConfig(cache_dir=cache), ModelSpec("m", str(tmp_path / "partial.safetensors"))
        )


async def test_without_its_configs_and_offline_the_engine_says_so_in_one_line(
    checkpoint: Path, tmp_path: Path
) -> None:
    config = EngineConfig(models=(ModelSpec("civitai", str(checkpoint)),), cache_dir=tmp_path)
    with pytest.raises(EngineError) as caught:
        async with Engine(config):
            pass
    message = str(caught.value)
    assert message.startswith(f"Could not load model 'civitai': the SD 1.x checkpoint {checkpoint}")
    assert f"needs the small config files of {SD15_CONFIG_REPO}" in message
    assert "downloads are off (HF_HUB_OFFLINE is set)" in message and "\n" not in message


def test_a_file_hash_is_its_sha256_kept_while_the_file_is_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"weights")
    assert model_hash(path, tmp_path) == hashlib.sha256(b"weights").hexdigest()[:10]
    index = tmp_path / "file-hashes.json"
    kept = json.loads(index.read_text())
    kept[str(path.resolve())]["sha256"] = "f" * 64  # a hash read back, not computed again
    index.write_text(json.dumps(kept))
    assert model_hash(path, tmp_path) == "f" * 10
    path.write_bytes(b"other weights")  # another size: computed again
    assert model_hash(path, tmp_path) == hashlib.sha256(b"other weights").hexdigest()[:10]
