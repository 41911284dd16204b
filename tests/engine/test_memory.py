"""Memory on one GPU: `[models.<name>] quantize` and `offload`, and `max_loaded_models` backed
by each model's size (`[engine] max_memory_gb`, else the GPU's memory).

On this CPU-only machine: int8 weight-only quantization through torchao (the `quantize`
extra) is run for real and compared with the stock pipeline quantized alike; fp8, nf4 and
offload, which need an NVIDIA GPU, are checked to be refused in one line. The size estimate
read from the files' headers is compared with the loaded model's own bytes, and the budget
with the real engine loading and unloading the tiny models.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from engine import Engine, EngineConfig, EngineError, ImageRequest, ModelSpec
from engine.budget import resident_estimate, weights_estimate
from engine.loader import load_model
from engine.memory import Weights
from engine.tiny import builtin_folder

from .conftest import EngineFactory, pixels
from .test_families import stock

HAS_TORCHAO = importlib.util.find_spec("torchao") is not None


def _request(model: str, seed: int = 3, **fields: Any) -> ImageRequest:
    return ImageRequest(
        "a lighthouse at dusk",
        seed=seed,
        steps=3,
        guidance=4.0,
        width=64,
        height=64,
        model=model,
        user=f"u{seed}",
        **fields,
    )


def _stock_int8(folder: Path, denoiser: str) -> Any:
    """The stock pipeline with its denoiser quantized as a diffusers user would write it."""
    from diffusers import DiffusionPipeline, TorchAoConfig
    from diffusers.quantizers import PipelineQuantizationConfig
    from torchao.quantization import Int8WeightOnlyConfig

    config = PipelineQuantizationConfig(
        quant_mapping={denoiser: TorchAoConfig(Int8WeightOnlyConfig())}
    )
    pipe = DiffusionPipeline.from_pretrained(
        folder, quantization_config=config, dtype=torch.float32, local_files_only=True
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.skipif(not HAS_TORCHAO, reason='needs torchao (pip install "imagine-bot[quantize]")')
@pytest.mark.parametrize("source", ["builtin:tiny", "builtin:tiny-flux"])
@pytest.mark.parametrize("scheduling", ["step", "batch"])
async def test_int8_makes_the_images_of_the_stock_pipeline_quantized_alike(
    source: str, scheduling: str, make_engine: EngineFactory, model_cache: Path
) -> None:
    models = (ModelSpec("q", source, quantize="int8"), ModelSpec("full", source))
    engine = await make_engine(models=models, scheduling=scheduling, max_loaded_models=2)
    q = await engine.generate(_request("q"))
    full = await engine.generate(_request("full"))
    job = engine.prepare(_request("q")).request
    sizes = {info.profile.name: info.memory_bytes for info in engine.models()}
    assert sizes["q"] < sizes["full"] * 0.95  # the denoiser's matrices take a byte, not four

    folder = builtin_folder(source, model_cache)
    denoiser = "transformer" if "flux" in source else "unet"
    ours, plain = pixels(q.images[0].png), pixels(full.images[0].png)
    model = load_model(EngineConfig(model=source, cache_dir=model_cache))
    quantized = dataclasses.replace(model, pipe=_stock_int8(folder, denoiser))
    theirs = stock(quantized, job, "pil")[0]
    assert np.abs(ours - np.asarray(theirs, dtype=np.int16)).max() <= 1
    # Quantized: close to the full-width image, not equal to it.
    assert 0 < np.abs(ours - plain).max() <= 32


def _load_error(tmp_path: Path, model_cache: Path, spec: ModelSpec) -> str:
    with pytest.raises(ValueError) as caught:
        load_model(EngineConfig(cache_dir=model_cache), spec)
    message = str(caught.value)
    assert "\n" not in message, message
    return message


def test_what_this_device_cannot_run_is_refused_in_one_line(
    tmp_path: Path, model_cache: Path
) -> None:
    said = _load_error(tmp_path, model_cache, ModelSpec("m", "builtin:tiny", offload="model"))
    assert said.startswith('offload = "model" needs a GPU')
    said = _load_error(tmp_path, model_cache, ModelSpec("m", "builtin:tiny-flux", quantize="fp8"))
    if HAS_TORCHAO:
        assert said.startswith('quantize = "fp8" needs an NVIDIA GPU with fp8') and "CPU" in said
    else:
        assert said == (
            'quantize = "fp8" needs torchao, which is not installed: '
            'pip install "imagine-bot[quantize]"'
        )
    said = _load_error(tmp_path, model_cache, ModelSpec("m", "builtin:tiny", quantize="nf4"))
    if importlib.util.find_spec("bitsandbytes") is None:
        assert said == (
            'quantize = "nf4" needs bitsandbytes, which is not installed: '
            'pip install "imagine-bot[nf4]"'
        )
    else:
        assert said.startswith('quantize = "nf4" needs an NVIDIA GPU (bitsandbytes)')


@pytest.mark.skipif(not HAS_TORCHAO, reason='needs torchao (pip install "imagine-bot[quantize]")')
def test_a_whole_sd_checkpoint_file_is_not_quantized(tmp_path: Path, model_cache: Path) -> None:
    from testkit.checkpoint import write_checkpoint

    file = write_checkpoint(builtin_folder("builtin:tiny", model_cache), tmp_path / "m.safetensors")
    said = _load_error(tmp_path, model_cache, ModelSpec("m", str(file), quantize="int8"))
    assert said.startswith(
        f"{file} is a whole SD 1.x checkpoint, which diffusers loads unquantized"
    )


@pytest.mark.parametrize(
    ("source", "quantize"),
    [
        ("builtin:tiny", "none"),
        ("builtin:tiny-flux", "none"),
        ("builtin:tiny-chroma", "none"),
        pytest.param(
            "builtin:tiny-flux",
            "int8",
            marks=pytest.mark.skipif(not HAS_TORCHAO, reason="needs torchao"),
        ),
    ],
)
def test_the_estimate_from_the_files_matches_the_loaded_weights(
    source: str, quantize: str, model_cache: Path
) -> None:
    config = EngineConfig(cache_dir=model_cache)
    spec = ModelSpec("m", source, quantize=quantize)
    estimate = resident_estimate(spec, config)
    loaded = load_model(config, spec)
    assert estimate is not None
    assert abs(estimate - loaded.resident_bytes()) <= 0.02 * loaded.resident_bytes()
    weights = weights_estimate(spec, config)
    assert isinstance(weights, Weights) and weights.complete
    # With offload, only the largest component is on the device at a time.
    largest = max(loaded.component_bytes().values())
    assert abs(weights.bytes("float32", quantize, "model") - largest) <= 0.02 * largest


async def test_a_model_that_can_never_fit_stops_start_up_in_one_line(model_cache: Path) -> None:
    config = EngineConfig(
        models=(ModelSpec("flux", "builtin:tiny-flux"),),
        cache_dir=model_cache,
        max_memory_gb=0.5 / 1024,  # 0.5 MiB: its weights take 1 MiB at float32
    )
    with pytest.raises(EngineError) as caught:
        await Engine(config).start()
    message = str(caught.value)
    assert message.startswith(
        "model flux needs about 1.0 MiB for its weights (float32), more than "
        "[engine] max_memory_gb (0.000488281 GiB): set "
    ), message
    assert 'offload = "model" (0.3 MiB)' in message and "\n" not in message


@pytest.mark.parametrize(("budget_mib", "together"), [(12, 1), (20, 2)])
async def test_loaded_models_stay_within_the_memory_budget(
    make_engine: EngineFactory, budget_mib: int, together: int
) -> None:
    """Two tiny models of 8.2 MiB each, `max_loaded_models = 2`: within 12 MiB they take
    turns, within 20 MiB both stay loaded."""
    models = (ModelSpec("a", "builtin:tiny"), ModelSpec("b", "builtin:tiny-b"))
    engine = await make_engine(models=models, max_loaded_models=2, max_memory_gb=budget_mib / 1024)
    assert sum(m.loaded for m in engine.models()) == together
    jobs = [engine.submit(engine.prepare(_request(m, seed=n))) for n, m in enumerate("abab")]
    most = 0
    for job in jobs:
        await job.result()
        most = max(most, sum(m.loaded for m in engine.models()))  # pipelines in memory
    await asyncio.gather(*(job.result() for job in jobs))
    assert most == together
    if together == 2:
        assert engine.model_loads == 0  # both stayed loaded
    else:
        assert engine.model_loads >= 1  # b, then a again: they took turns
