"""Several models, LoRAs and weighted prompts through the real engine (both scheduling modes).

Two tiny models with different random weights (`builtin:tiny`, `builtin:tiny-b`) and a tiny
LoRA made here with peft. Every image is compared with the stock diffusers pipeline of its own
model (and LoRA) run alone, so routing a request to the wrong model or LoRA set fails.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import Engine, ImageRequest, InvalidRequest, JobState, LoraSpec, ModelSpec
from engine.tiny import builtin_folder
from testkit.lora import make_tiny_lora

from .conftest import EngineFactory, pixels

MODELS = (
    ModelSpec("a", "builtin:tiny", description="the first tiny model"),
    ModelSpec("b", "builtin:tiny-b", description="other random weights"),
)
SIZE = 64
STEPS = 3


def _request(model: str, seed: int, prompt: str = "a red fox", **fields: object) -> ImageRequest:
    return ImageRequest(
        prompt,
        seed=seed,
        steps=STEPS,
        width=SIZE,
        height=SIZE,
        model=model,
        user=f"user-{seed}",
        **fields,  # type: ignore[arg-type]
    )


def _stock(cache: Path, source: str, request: ImageRequest, lora: tuple[Path, float] | None):
    """The stock pipeline of `source` (with `lora` active), alone, as uint8 pixels."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        builtin_folder(source, cache), local_files_only=True
    )
    pipe.set_progress_bar_config(disable=True)
    if lora is not None:
        pipe.load_lora_weights(str(lora[0]), adapter_name="only")
        pipe.set_adapters(["only"], adapter_weights=[lora[1]])
    assert request.seed is not None
    with torch.inference_mode():
        image = pipe(
            request.prompt,
            num_inference_steps=STEPS,
            guidance_scale=7.0,  # the tiny models' default
            width=SIZE,
            height=SIZE,
            generator=torch.Generator().manual_seed(request.seed),
            output_type="np",
        ).images[0]
    return np.round(image * 255).astype(np.int16)


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Path:
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(
        builtin_folder("builtin:tiny", model_cache) / "unet", local_files_only=True
    )
    return make_tiny_lora(unet, tmp_path_factory.mktemp("lora") / "ink.safetensors", seed=5)


@pytest.mark.parametrize("scheduling", ["batch", "step"])
async def test_alternating_models_with_one_loaded_each_equal_their_model_alone(
    make_engine: EngineFactory, model_cache: Path, lora_file: Path, scheduling: str
) -> None:
    loras = (LoraSpec("ink", str(lora_file), weight=0.8, models=("a", "b")),)
    engine = await make_engine(
        models=MODELS, default_model="a", max_loaded_models=1, scheduling=scheduling, loras=loras
    )
    assert engine.scheduling == scheduling
    assert [(m.name, m.loaded) for m in engine.models()] == [("a", True), ("b", False)]

    asked = [
        _request("a", 1),
        _request("b", 2),
        _request("a", 3, "a red fox <lora:ink>"),
        _request("b", 4),
    ]
    jobs = [engine.submit(engine.prepare(request)) for request in asked]
    said_loading: set[str] = set()

    async def watch(job_index: int) -> None:
        async for progress in jobs[job_index].updates():
            if progress.state is JobState.QUEUED and progress.loading:
                said_loading.add(progress.loading)

    watchers = [asyncio.create_task(watch(i)) for i in range(len(jobs))]
    results = []
    for job in jobs:
        results.append(await job.result())
        assert sum(m.loaded for m in engine.models()) <= 1  # never two pipelines at once
    await asyncio.gather(*watchers)

    assert [r.model for r in results] == ["a", "b", "a", "b"]
    assert [r.request.loras for r in results] == [(), (), (("ink", 0.8),), ()]
    assert "b" in said_loading  # a request for the unloaded model said what it waits for
    assert engine.model_loads >= 2  # b, then a again (or more, in fair order)
    sources = {"a": "builtin:tiny", "b": "builtin:tiny-b"}
    for request, result in zip(asked, results, strict=True):
        lora = (lora_file, 0.8) if "<lora:" in request.prompt else None
        clean = ImageRequest("a red fox", seed=request.seed)
        want = _stock(model_cache, sources[request.model or "a"], clean, lora)
        got = pixels(result.images[0].png)
        assert np.abs(got - want).max() <= 1, (request.model, request.prompt)
    # The two models (and the LoRA) really differ: a swap would have been caught above.
    assert np.abs(pixels(results[0].images[0].png) - pixels(results[1].images[0].png)).max() > 1


async def test_a_batch_never_mixes_models_or_lora_sets(
    make_engine: EngineFactory, lora_file: Path
) -> None:
    loras = (LoraSpec("ink", str(lora_file)),)
    engine = await make_engine(
        models=MODELS, max_loaded_models=2, loras=loras, batch_wait_ms=500, max_batch_size=8
    )
    asked = [
        _request("a", 1),
        _request("b", 1),
        _request("a", 2, "a red fox <lora:ink:0.5>"),
        _request("a", 3),
    ]
    jobs = [engine.submit(engine.prepare(request)) for request in asked]
    await asyncio.gather(*(job.result() for job in jobs))
    # a (two plain requests together), a with the LoRA, b: three calls, not one.
    assert engine.stats.batches == 3


async def test_a_second_engine_model_and_lora_names_are_checked(
    make_engine: EngineFactory, lora_file: Path
) -> None:
    loras = (LoraSpec("ink", str(lora_file), models=("a",)),)
    engine = await make_engine(models=MODELS, loras=loras)
    with pytest.raises(InvalidRequest, match="no model called 'c'"):
        engine.prepare(_request("c", 1))
    with pytest.raises(InvalidRequest, match="no LoRA called 'nope'"):
        engine.prepare(_request("a", 1, "a fox <lora:nope:0.5>"))
    with pytest.raises(InvalidRequest, match="does not fit the model b"):
        engine.prepare(_request("b", 1, "a fox <lora:ink>"))
    resolved = engine.prepare(_request("a", 1, "a fox <lora:ink:0.3>")).request
    assert resolved.prompt == "a fox" and resolved.loras == (("ink", 0.3),)


async def test_a_lora_that_does_not_fit_stops_start_up_with_one_line(
    model_cache: Path, tmp_path: Path
) -> None:
    from engine import EngineConfig, EngineError
    from engine.tiny_parts import tiny_unet

    wrong = make_tiny_lora(
        tiny_unet(cross_attention_dim=64), tmp_path / "wrong.safetensors", seed=1
    )
    config = EngineConfig(
        model="builtin:tiny",
        cache_dir=model_cache,
        loras=(LoraSpec("wrong", str(wrong)),),
    )
    with pytest.raises(EngineError) as caught:
        await Engine(config).start()
    assert "LoRA wrong cannot load into model tiny" in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("scheduling", ["batch", "step"])
async def test_prompt_weights_and_long_prompts(make_engine: EngineFactory, scheduling: str) -> None:
    engine = await make_engine(scheduling=scheduling)
    long = ", ".join(f"detail {n}" for n in range(60))  # well past one 77-token window
    asked = [
        _request("tiny", 7, "a (robot:1.0) in the rain"),
        _request("tiny", 7, "a robot in the rain"),
        _request("tiny", 7, "a (robot:1.5) in the rain"),
        _request("tiny", 7, long),
    ]
    jobs = [engine.submit(engine.prepare(request)) for request in asked]
    same, plain, heavy, chunked = [(await job.result()).images[0] for job in jobs]
    assert jobs[3].request.chunks >= 2 and jobs[0].request.chunks == 1
    assert np.array_equal(pixels(same.png), pixels(plain.png))  # weight 1.0 changes nothing
    assert np.abs(pixels(heavy.png) - pixels(plain.png)).max() > 0
    assert chunked.width == SIZE
