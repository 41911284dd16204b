"""The compiled UNet with batch-size buckets, on the CPU: padding never changes real images,
and after the warm-up a running engine does not compile again.

Inductor takes over a minute per shape on these CPUs, so the engine test compiles with
torch.compile's "eager" backend: dynamo traces and guards exactly as in production (the
graphs and recompiles are the same), only the code generation is skipped.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator

import pytest
import torch

from engine import Engine, EngineConfig, ImageRequest, ModelSpec
from engine.acceleration import BucketedForward, bucket_for, default_buckets
from engine.loader import load_model

from .conftest import StockModels, pixels


@pytest.fixture
def fresh_dynamo() -> Iterator[None]:
    """Each test's compiled graphs start from nothing (engines in one process share them)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_buckets() -> None:
    assert default_buckets(8) == (1, 2, 4, 8, 16)
    assert default_buckets(3) == (1, 2, 4, 6)
    assert [bucket_for(n, (2, 4, 8)) for n in (1, 2, 3, 8, 9)] == [2, 2, 4, 8, None]


@pytest.mark.parametrize("sdxl", [False, True])
def test_padded_rows_never_change_the_real_ones(
    sdxl: bool, tiny_config: EngineConfig, sdxl_folder: object
) -> None:
    config = dataclasses.replace(tiny_config, model=str(sdxl_folder)) if sdxl else tiny_config
    unet = load_model(config).pipe.unet
    rows = 3
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(rows, 4, 8, 8, generator=generator)
    timesteps = torch.tensor([999, 500, 1])
    text = torch.randn(rows, 77, unet.config.cross_attention_dim, generator=generator)
    kwargs: dict[str, object] = {"encoder_hidden_states": text, "return_dict": False}
    if sdxl:
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(rows, 32, generator=generator),
            "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * rows),
        }
    with torch.inference_mode():
        plain = unet(sample, timesteps, **kwargs)[0]
        padded = BucketedForward(unet.forward, (8,))
        out = padded(sample, timesteps, **kwargs)[0]
    assert padded.calls == {8: 1} and out.shape == plain.shape
    assert (out - plain).abs().max().item() < 1e-5


@pytest.mark.parametrize("scheduling", ["step", "batch"])
async def test_a_compiled_engine_matches_stock_and_never_recompiles_after_warm_up(
    scheduling: str, fresh_dynamo: None, tiny_config: EngineConfig, stock_models: StockModels
) -> None:
    from torch._dynamo.utils import counters

    config = dataclasses.replace(
        tiny_config,
        compile="default",
        compile_backend="eager",
        compile_buckets=(4,),
        max_batch_size=2,
        max_count=2,
        scheduling=scheduling,
        batch_wait_ms=0,
    )
    async with Engine(config) as engine:
        forward = await engine.run_in_worker(lambda pipe: pipe.unet.forward)
        assert isinstance(forward, BucketedForward) and forward.buckets == (4,)
        warmed = counters["stats"]["unique_graphs"]
        assert warmed >= 1  # the bucket's graph, compiled before the first request
        jobs = [
            engine.submit(
                engine.prepare(ImageRequest("a kite", seed=3, steps=3, guidance=7.0, user="a"))
            ),
            engine.submit(
                engine.prepare(ImageRequest("a boat", seed=5, steps=2, guidance=1.0, user="b"))
            ),
            engine.submit(
                engine.prepare(ImageRequest("two owls", seed=8, steps=2, guidance=4.0, count=2))
            ),
        ]
        results = await asyncio.gather(*(job.result() for job in jobs))
        assert counters["stats"]["unique_graphs"] == warmed  # no compile after the warm-up
        assert set(forward.calls) == {4}  # every call padded to the bucket (1, 2 or 4 rows)
    stock = stock_models(tiny_config)
    for job, result in zip(jobs, results, strict=True):
        r = job.request
        expected = stock.pipe(
            prompt=r.prompt,
            num_inference_steps=r.steps,
            guidance_scale=r.guidance,
            width=r.width,
            height=r.height,
            num_images_per_prompt=r.count,
            generator=[torch.Generator("cpu").manual_seed(seed) for seed in r.seeds],
        ).images
        for image, theirs in zip(result.images, expected, strict=True):
            ours = pixels(image.png)
            assert abs(ours - pixels_of(theirs)).max() <= 1


def pixels_of(image: object) -> object:
    import numpy as np

    return np.asarray(image.convert("RGB"), dtype=np.int16)  # type: ignore[attr-defined]


async def test_a_compiled_engine_with_a_step_cache_compiles_both_forwards_at_warm_up(
    fresh_dynamo: None, tiny_config: EngineConfig, stock_models: StockModels
) -> None:
    """DeepCache's reuse forward is a second graph per bucket: compiled at start-up too, and
    the images are the uncompiled cache's (the `DeepCache` package's, test_step_cache)."""
    from torch._dynamo.utils import counters

    from .test_step_cache import reference

    settings = {"cache_interval": 2, "cache_branch": 0}
    spec = ModelSpec("m", "builtin:tiny", cache="deepcache", cache_for="all", **settings)
    config = dataclasses.replace(
        tiny_config,
        models=(spec,),
        compile="default",
        compile_backend="eager",
        compile_buckets=(4,),
        max_batch_size=2,
        max_count=2,
        scheduling="step",
        batch_wait_ms=0,
    )
    async with Engine(config) as engine:
        warmed = counters["stats"]["unique_graphs"]
        assert warmed >= 2  # the bucket's full and reuse graphs
        jobs = [
            engine.submit(engine.prepare(ImageRequest("a kite", seed=3, steps=4, user="a"))),
            engine.submit(engine.prepare(ImageRequest("two owls", seed=8, steps=3, count=2))),
        ]
        results = await asyncio.gather(*(job.result() for job in jobs))
        assert counters["stats"]["unique_graphs"] == warmed  # no compile after the warm-up
    stock = stock_models(tiny_config)
    for job, result in zip(jobs, results, strict=True):
        assert job.request.fast
        expected = reference(stock, job.request, "pil", **settings)
        for image, theirs in zip(result.images, expected, strict=True):
            assert abs(pixels(image.png) - pixels_of(theirs)).max() <= 1
