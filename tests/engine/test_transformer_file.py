"""A model `source` that is a diffusion transformer's single file (FLUX.1, Chroma, SD3/3.5,
Z-Image, Qwen-Image, FLUX.2 [klein]), as users download them: the transformer through
diffusers' `from_single_file`, every other component from the family's reference repository.

Offline: the hub cache holds each reference repository, seeded with the tiny model of its
family less its transformer's weights (`testkit.transformer_file`), and the tiny transformer
is written as one file. The file's kind is found from its weight names (diffusers'
`infer_diffusers_model_type`, and the diffusers layout's own names; a FLUX.2's size from its
width), or given by `[models.<name>] base`; every failure is one line naming the file.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from engine import Engine, EngineConfig, ImageRequest, ModelSpec, read_parameters
from engine.loader import load_model
from engine.tiny import builtin_folder
from testkit.transformer_file import (
    seed_hub_model,
    write_bfl_flux2,
    write_bfl_names,
    write_original_sd3,
    write_original_zimage,
    write_sai_names,
    write_transformer_file,
)

from .conftest import pixels

#: Each tiny model of a family served from transformer files, the repository diffusers names
#: for its file's kind, and its family. A new family: one line.
KINDS = {
    "builtin:tiny-flux": ("black-forest-labs/FLUX.1-schnell", "flux"),
    "builtin:tiny-flux-dev": ("black-forest-labs/FLUX.1-dev", "flux"),
    "builtin:tiny-chroma": ("lodestones/Chroma1-HD", "chroma"),
    "builtin:tiny-sd3": ("stabilityai/stable-diffusion-3.5-medium", "sd3"),
    "builtin:tiny-zimage": ("Tongyi-MAI/Z-Image-Turbo", "zimage"),
    # diffusers 0.42 knows neither file (it takes FLUX.2's for [dev]): the engine tells them.
    "builtin:tiny-qwenimage": ("Qwen/Qwen-Image", "qwenimage"),
    "builtin:tiny-flux2-klein": ("black-forest-labs/FLUX.2-klein-4B", "flux2"),
}
#: Edit models whose transformer files are taken for their text-to-image model's (the same
#: shapes): served with their own `base`. (Qwen-Image-Edit's folder cannot be loaded back
#: here: transformers 5's Qwen2-VL processor needs torchvision; the same check serves it.)
EDITS = ("builtin:tiny-flux-kontext",)


@pytest.fixture(scope="module", autouse=True)
def offline() -> Iterator[None]:
    """No hub requests, as on a machine without network."""
    from huggingface_hub import constants

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(constants, "HF_HUB_OFFLINE", True)
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def folders(model_cache: Path) -> dict[str, Path]:
    sources = [*KINDS, *EDITS, "builtin:tiny"]
    return {source: builtin_folder(source, model_cache) for source in sources}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory, folders: dict[str, Path]) -> Path:
    """A cache folder with the tiny models, and each reference repository in its hub cache."""
    root = tmp_path_factory.mktemp("cache")
    for source, folder in folders.items():
        shutil.copytree(folder, root / folder.name)
        if source in KINDS:
            seed_hub_model(folder, root / "hub", KINDS[source][0])
    return root


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, folders: dict[str, Path]) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("transformers")
    return {
        source: write_transformer_file(folders[source], tmp / f"{source[8:]}.safetensors")
        for source in KINDS
    }


def _request(model: str) -> ImageRequest:
    return ImageRequest(
        "a lighthouse at dusk", seed=11, steps=3, guidance=4.0, width=64, height=64, model=model
    )


@pytest.mark.parametrize("source", list(KINDS))
async def test_a_transformer_file_makes_the_images_of_its_folder(
    source: str, cache: Path, files: dict[str, Path]
) -> None:
    models = (ModelSpec("folder", source), ModelSpec("file", str(files[source])))
    config = EngineConfig(models=models, cache_dir=cache, max_loaded_models=2, batch_wait_ms=0)
    async with Engine(config) as engine:
        folder = await engine.generate(_request("folder"))
        file = await engine.generate(_request("file"))
        profile = engine.profile_of("file")
    assert profile.family == KINDS[source][1]
    assert np.array_equal(pixels(file.images[0].png), pixels(folder.images[0].png))
    params = read_parameters(file.images[0].png)
    assert params is not None and params.model == "file"
    digest = hashlib.sha256(files[source].read_bytes()).hexdigest()
    assert ("Model hash", digest[:10]) in params.extra


@pytest.mark.parametrize(
    "source", ["builtin:tiny-zimage", "builtin:tiny-flux2-klein", "builtin:tiny-sd3"]
)
async def test_an_original_layout_file_makes_the_images_of_its_folder(
    source: str, cache: Path, folders: dict[str, Path], tmp_path: Path
) -> None:
    """ComfyUI's Z-Image files, BFL's FLUX.2 [klein] files and Stability's SD3 files (fused
    qkv), converted by diffusers: Z-Image's and FLUX.2 [klein]'s recognised without a base
    (diffusers alone would take the FLUX.2 file for [dev]), the tiny SD3 (too narrow for
    diffusers to recognise: `write_sai_names` has the full width) with its base."""
    path, base = tmp_path / "transformer.safetensors", ""
    if source == "builtin:tiny-zimage":
        write_original_zimage(folders[source], path)
    elif source == "builtin:tiny-flux2-klein":
        write_bfl_flux2(folders[source], path)
    else:
        write_original_sd3(folders[source], path)
        base = str(folders[source])
    models = (ModelSpec("folder", source), ModelSpec("file", str(path), base=base))
    config = EngineConfig(models=models, cache_dir=cache, max_loaded_models=2, batch_wait_ms=0)
    async with Engine(config) as engine:
        folder = await engine.generate(_request("folder"))
        file = await engine.generate(_request("file"))
    assert np.array_equal(pixels(file.images[0].png), pixels(folder.images[0].png))


def assert_transformer_of(pipe: Any, folder: Path) -> None:
    """`pipe`'s transformer holds exactly the weights of the one in `folder`."""
    want = (
        type(pipe.transformer)
        .from_pretrained(folder / "transformer", local_files_only=True)
        .state_dict()
    )
    got = pipe.transformer.state_dict()
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_base_names_the_reference_repository(
    cache: Path, files: dict[str, Path], folders: dict[str, Path]
) -> None:
    """A base folder given for a file: its components are used, whatever the file's kind."""
    spec = ModelSpec(
        "m", str(files["builtin:tiny-flux-dev"]), base=str(folders["builtin:tiny-flux-dev"])
    )
    loaded = load_model(EngineConfig(cache_dir=cache), spec)
    assert type(loaded.pipe).__name__ == "FluxPipeline"
    assert_transformer_of(loaded.pipe, folders["builtin:tiny-flux-dev"])
    assert loaded.profile.default_guidance == 3.5  # dev's distilled guidance, from its base


@pytest.mark.parametrize("source", EDITS)
def test_an_edit_models_file_is_served_with_its_base(
    source: str, cache: Path, folders: dict[str, Path], tmp_path: Path
) -> None:
    """A FLUX.1 Kontext transformer file reads as FLUX.1 [dev] (the same weights' shapes);
    with the edit model as its base, the edit pipeline is made with the file's transformer
    (not refused for naming another pipeline than [dev]'s)."""
    import json

    folder = folders[source]
    path = write_transformer_file(folder, tmp_path / "edit.safetensors")
    loaded = load_model(EngineConfig(cache_dir=cache), ModelSpec("m", str(path), base=str(folder)))
    index = json.loads((folder / "model_index.json").read_text())
    assert type(loaded.pipe).__name__ == index["_class_name"]
    assert_transformer_of(loaded.pipe, folder)


@pytest.mark.parametrize(
    ("case", "said"),
    [
        (
            "bfl-dev-not-cached",
            "needs the other components (text encoders, VAE, configs) of "
            "black-forest-labs/FLUX.1-dev from the Hugging Face hub: the model "
            "black-forest-labs/FLUX.1-dev is not in the local cache and downloads are off",
        ),
        (
            "sai-sd35-not-cached",
            "needs the other components (text encoders, VAE, configs) of "
            "stabilityai/stable-diffusion-3.5-medium from the Hugging Face hub",
        ),
        ("bfl-flux2-dev", "is a checkpoint of another kind (flux-2-dev)"),
        (
            "bfl-klein-9b-not-cached",
            "needs the other components (text encoders, VAE, configs) of "
            "black-forest-labs/FLUX.2-klein-9B from the Hugging Face hub",
        ),
        ("chroma-on-flux", "holds a Chroma transformer, but its base"),
        ("zimage-on-sd3", "holds a Z-Image transformer, but its base"),
        ("sd3-on-flux", "holds a SD3.5 Medium transformer, but its base"),
        ("flux-on-sd", "holds a FLUX.1-schnell transformer, but its base"),
        ("schnell-on-dev", "does not fit the transformer of"),
        ("unknown", "is not a checkpoint of a model family served here"),
        ("missing-base", "the base folder"),
    ],
)
def test_a_transformer_file_that_cannot_load_is_one_clear_line(
    case: str,
    said: str,
    cache: Path,
    files: dict[str, Path],
    folders: dict[str, Path],
    tmp_path: Path,
) -> None:
    from safetensors.torch import save_file

    base = ""
    if case == "bfl-dev-not-cached":
        path = write_bfl_names(tmp_path / "flux1-dev.safetensors", guidance=True)
    elif case == "sai-sd35-not-cached":
        path = write_sai_names(tmp_path / "sd3.5_medium.safetensors")
    elif case.startswith("bfl-"):  # FLUX.2 [dev] (6144 wide) or [klein] 9B (4096), as BFL's
        path, base = (
            tmp_path / "flux-2.safetensors",
            str(folders["builtin:tiny-flux2-klein"]) if case == "bfl-flux2-dev" else "",
        )
        width = 6144 if case == "bfl-flux2-dev" else 4096
        names = ("single_stream_modulation.lin.weight", "img_in.weight")
        save_file({name: torch.zeros(width, 2, dtype=torch.bfloat16) for name in names}, str(path))
    elif case == "zimage-on-sd3":
        path, base = files["builtin:tiny-zimage"], str(folders["builtin:tiny-sd3"])
    elif case == "sd3-on-flux":
        path, base = files["builtin:tiny-sd3"], str(folders["builtin:tiny-flux"])
    elif case == "chroma-on-flux":
        path, base = files["builtin:tiny-chroma"], str(folders["builtin:tiny-flux"])
    elif case == "flux-on-sd":
        path, base = files["builtin:tiny-flux"], str(folders["builtin:tiny"])
    elif case == "schnell-on-dev":
        path, base = files["builtin:tiny-flux"], str(folders["builtin:tiny-flux-dev"])
    elif case == "unknown":
        path = tmp_path / "blocks.safetensors"
        save_file({"blocks.0.attn.weight": torch.zeros(2, 2)}, str(path))
    else:
        path, base = files["builtin:tiny-flux"], str(tmp_path / "no-such-folder")
    # The original file's repository is not in this empty cache: the rest cannot come.
    where = tmp_path / "empty" if case.endswith("-not-cached") else cache
    with pytest.raises(ValueError) as caught:
        load_model(EngineConfig(cache_dir=where), ModelSpec("m", str(path), base=base))
    message = str(caught.value)
    assert said in message and "\n" not in message, message
    assert str(path) in message, message
    if case == "unknown":
        assert "[models.<name>] base" in message
