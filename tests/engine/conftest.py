"""Engine fixtures: a started engine on the real tiny pipeline, configured per test."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from engine import Engine, EngineConfig, ImageRequest, InvalidRequest, Job, JobState
from engine.families import family_named
from engine.job import Slot
from engine.loader import LoadedModel, load_model
from engine.stepper import Sample, Stepper

EngineFactory = Callable[..., Awaitable[Engine]]
StockModels = Callable[..., LoadedModel]


@pytest.fixture
def tiny_config(model_cache: Path) -> EngineConfig:
    return EngineConfig(model="builtin:tiny", cache_dir=model_cache, batch_wait_ms=20)


@pytest.fixture
async def make_engine(tiny_config: EngineConfig) -> AsyncIterator[EngineFactory]:
    """`await make_engine(max_batch_size=4)` starts an engine closed at teardown."""
    started: list[Engine] = []

    async def factory(**overrides: Any) -> Engine:
        engine = Engine(dataclasses.replace(tiny_config, **overrides))
        await engine.start()
        started.append(engine)
        return engine

    yield factory
    for engine in started:
        await engine.close()


def pixels(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.int16)


async def until_running(job: Job) -> None:
    """Wait (by awaiting its progress, not sleeping) until the job's batch has started."""
    async for progress in job.updates():
        if progress.state is not JobState.QUEUED:
            return


@pytest.fixture(scope="module")
def stock_models() -> Iterator[StockModels]:
    """Stock pipelines loaded by the engine's loader, cached per config for the module."""
    cache: dict[EngineConfig, LoadedModel] = {}

    def get(config: EngineConfig, **overrides: Any) -> LoadedModel:
        config = dataclasses.replace(config, **overrides)
        if config not in cache:
            cache[config] = load_model(config)
        return cache[config]

    yield get
    cache.clear()


def build_tiny_sdxl(folder: Path) -> None:
    """A random SDXL pipeline shaped like diffusers' own SDXL fast-test components."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from engine.tiny_parts import clip_tokenizer, tiny_text_config, tiny_unet, tiny_vae

    torch.manual_seed(0)
    tokenizer = clip_tokenizer()
    unet = tiny_unet(
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,  # 6 time ids * 8 + 32 pooled
        cross_attention_dim=64,  # both encoders' hidden states, concatenated
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        steps_offset=1,
        beta_schedule="scaled_linear",
        timestep_spacing="leading",
    )
    vae = tiny_vae()
    text_config = tiny_text_config(tokenizer, hidden_act="gelu", projection_dim=32)
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=CLIPTextModel(text_config),
        text_encoder_2=CLIPTextModelWithProjection(text_config),
        tokenizer=tokenizer,
        tokenizer_2=clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        add_watermarker=False,
    )
    pipe.save_pretrained(folder)


@pytest.fixture(scope="session")
def sdxl_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-sdxl")
    build_tiny_sdxl(folder)
    return folder


def quiet_slot(request: ImageRequest) -> Slot:
    return Slot(request, lambda i, n: None, lambda png: None, lambda: False, lambda: False)


def run_staggered(stepper: Stepper, first: ImageRequest, later: list[ImageRequest]) -> list[Sample]:
    """Run `first` for two ticks alone, then admit `later` and tick everyone to the end."""
    samples = [stepper.admit(quiet_slot(first))]
    stepper.tick(samples)
    stepper.tick(samples)
    samples += [stepper.admit(quiet_slot(r)) for r in later]
    active = list(samples)
    while active:
        assert stepper.tick(active) == [None] * len(active)
        active = [s for s in active if not s.done]
    return samples


async def assert_stock_images_in_both_modes(
    engine: Engine,
    model: LoadedModel,
    stock: Callable[[LoadedModel, ImageRequest, str], Any],
    second_prompt: str,
) -> None:
    """Three requests of different steps, guidance, counts and negative prompts, submitted
    together: each job's images equal `stock` run alone (within 1 per channel), and in step
    mode the three shared ticks. `second_prompt` is the family's own (weights where it reads
    them)."""
    asked = [
        ImageRequest("a lighthouse at night", seed=3, steps=3, guidance=4.0, user="a"),
        ImageRequest(second_prompt, seed=8, steps=3, guidance=4.0, count=2, user="b"),
        ImageRequest("a ship", negative_prompt="fog", seed=11, steps=2, guidance=2.0, user="c"),
    ]
    jobs = [engine.submit(engine.prepare(r)) for r in asked]
    for job in jobs:
        result = await job.result()
        expected = stock(model, job.request, "pil")
        assert len(result.images) == len(expected) == job.request.count
        for image, theirs in zip(result.images, expected, strict=True):
            ours = pixels(image.png)
            assert np.abs(ours - np.asarray(theirs, dtype=np.int16)).max() <= 1
    if engine.scheduling == "step":  # the three requests shared ticks
        assert max(call.requests for call in engine.stats.recent_calls) == 3


def rows_of(ids: list[int], piece: list[int]) -> list[int]:
    """The positions of the token ids `piece` in `ids` (its first occurrence)."""
    for start in range(len(ids) - len(piece) + 1):
        if ids[start : start + len(piece)] == piece:
            return list(range(start, start + len(piece)))
    raise AssertionError(f"{piece} is not in {ids}")


def scaled(stock: torch.Tensor, rows: dict[int, float]) -> torch.Tensor:
    """`stock` (count, length, width) with each of `rows` multiplied by its weight."""
    out = stock.clone()
    for row, weight in rows.items():
        out[:, row] = stock[:, row] * weight
    return out


async def assert_weights_apply_alone_and_batched(engine: Engine, guidance: float) -> None:
    """A1111 weights reach a T5 family: no note, the syntax kept for the encoder; a weight
    changes the image, `(red:1.0)` is the plain prompt's image; a weighted and an unweighted
    request submitted together (one batch, or shared ticks) each equal themselves alone.
    Negative prompts (weighted too) where the family reads them. A weight past the bound is
    refused as on SD (`weighting.MAX_WEIGHT`), not taken out."""
    with pytest.raises(InvalidRequest, match="'cat' weighs 99"):
        engine.prepare(ImageRequest("a (cat:99)"))
    negatives = engine.profile.negative_prompt
    asked = [
        ImageRequest(
            text,
            negative_prompt=neg if negatives else "",
            seed=6,
            steps=2,
            guidance=guidance,
            user=user,
        )
        for text, neg, user in (
            ("a (red:3) fox in [snow]", "(blurry:0.2)", "a"),
            ("a red fox in snow", "blurry", "b"),
            ("a (red:1.0) fox in snow", "blurry", "c"),
        )
    ]
    checked = [engine.prepare(r) for r in asked]
    assert [c.warnings for c in checked] == [()] * 3  # weights are read: no note
    assert checked[0].request.prompt == "a (red:3) fox in [snow]"
    seen: list[torch.Tensor] = []  # the text sequences the transformer read

    def watch(pipe: Any) -> Any:
        def hook(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
            seen.append(kwargs["encoder_hidden_states"].clone())

        return pipe.transformer.register_forward_pre_hook(hook, with_kwargs=True)

    def weighted_text(pipe: Any) -> torch.Tensor:
        with torch.inference_mode():
            r = checked[0].request
            family = family_named(engine.profile.family)
            args = {"device": "cpu", "count": 1, "cfg": guidance > 1.0}
            return family.embeddings(pipe, r.prompt, r.negative_prompt, **args).cond[0]

    handle = await engine.run_in_worker(watch)
    jobs = [engine.submit(c) for c in checked]
    together = [await job.result() for job in jobs]
    handle.remove()
    # The weighted request's own sequence reached the shared forward (not the plain one's).
    text = await engine.run_in_worker(weighted_text)
    assert any(torch.equal(row, text) for rows in seen for row in rows)
    if engine.scheduling == "batch":
        assert {r.batch_images for r in together} == {3}  # one pipeline call
    else:
        assert max(call.requests for call in engine.stats.recent_calls) == 3
    alone = [await engine.generate(r) for r in asked]
    shown = [[pixels(r.images[0].png) for r in results] for results in (together, alone)]
    for ours, theirs in zip(*shown, strict=True):
        assert np.abs(ours - theirs).max() <= 1
    weighted, plain, unit = shown[1]
    assert np.array_equal(unit, plain)  # weight 1.0 is the plain prompt's image exactly
    assert not np.array_equal(weighted, plain)  # a weight changes the image
