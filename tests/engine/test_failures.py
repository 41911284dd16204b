"""Failures: a batch that runs out of memory is split, a bad request fails alone, a dead engine
says so instead of hanging, and a model that cannot load is a clear error.

No GPU here, so out-of-memory is simulated: a forward pre-hook on the real UNet raises
`torch.cuda.OutOfMemoryError` for inputs above a size, the way a small GPU would. The hooks are
installed through `Engine.run_in_worker`, on the thread that owns the pipeline.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

import numpy as np
import pytest
import torch

from engine import (
    Engine,
    EngineConfig,
    EngineDead,
    EngineError,
    GenerationFailed,
    ImageRequest,
)
from engine.failures import NotFinite
from engine.torch_ops import preview_png
from tests.reliability.fault_hooks.sitecustomize import NAN_SEED, NOISE_MODULES
from tests.reliability.fault_hooks.sitecustomize import nan_noise as nan_noise_of

from .conftest import EngineFactory, pixels, until_running


def limit_unet_batch(pipe: Any, max_samples: int) -> None:
    def hook(module: Any, args: tuple[Any, ...]) -> None:
        if args[0].shape[0] > max_samples:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    pipe.unet.register_forward_pre_hook(hook)


async def test_an_out_of_memory_batch_is_split_until_it_fits(make_engine: EngineFactory) -> None:
    engine = await make_engine(max_batch_size=8, batch_wait_ms=200)
    requests = [ImageRequest(f"robot {i}", seed=i, user=f"u{i}") for i in range(4)]
    alone = [await engine.generate(r) for r in requests]  # before the "GPU" shrinks

    await engine.run_in_worker(lambda pipe: limit_unet_batch(pipe, 2))  # CFG: 1 image = 2
    jobs = [engine.submit(engine.prepare(r)) for r in requests]
    results = [await job.result() for job in jobs]
    assert engine.stats.splits == 3  # 4 -> 2 + 2 -> 1 + 1 + 1 + 1
    for a, b in zip(alone, results, strict=True):
        assert np.abs(pixels(a.images[0].png) - pixels(b.images[0].png)).max() <= 1


async def test_a_request_that_always_fails_fails_alone(make_engine: EngineFactory) -> None:
    engine = await make_engine(max_batch_size=8, batch_wait_ms=200)
    poison = "a poisoned prompt"

    def install(pipe: Any) -> None:
        bad = pipe.tokenizer(
            poison, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
        ).input_ids[0]

        def hook(module: Any, args: tuple[Any, ...]) -> None:
            if any(torch.equal(row, bad) for row in args[0]):
                raise torch.cuda.OutOfMemoryError("CUDA out of memory.")

        pipe.text_encoder.register_forward_pre_hook(hook)

    await engine.run_in_worker(install)
    good = [
        engine.submit(engine.prepare(ImageRequest(f"fine {i}", user=f"u{i}"))) for i in range(3)
    ]
    bad = engine.submit(engine.prepare(ImageRequest(poison, user="mallory")))
    for job in good:
        assert len((await job.result()).images) == 1
    with pytest.raises(GenerationFailed) as info:
        await bad.result()
    assert "ran out of memory" in str(info.value)  # a sentence for users, no traceback
    assert isinstance(info.value.original, torch.cuda.OutOfMemoryError)
    assert engine.stats.failed == 1
    assert engine.alive


@pytest.mark.parametrize(
    ("scheduling", "error"),
    [
        ("batch", "CUDA error: device-side assert triggered"),
        ("step", "CUDA error: an illegal memory access was encountered"),
    ],
)
async def test_a_dead_worker_fails_everything_pending_and_later(
    make_engine: EngineFactory, scheduling: str, error: str
) -> None:
    engine = await make_engine(
        max_batch_size=1, max_count=1, batch_wait_ms=0, scheduling=scheduling
    )

    def poison_context(pipe: Any) -> None:
        def hook(module: Any, args: tuple[Any, ...]) -> None:
            raise RuntimeError(error)

        pipe.unet.register_forward_pre_hook(hook)

    await engine.run_in_worker(poison_context)
    running = engine.submit(engine.prepare(ImageRequest("first", user="a")))
    await until_running(running)
    queued = engine.submit(engine.prepare(ImageRequest("second", user="b")))
    for job in (running, queued):
        with pytest.raises(EngineDead):
            await job.result()
    assert not engine.alive
    with pytest.raises(EngineDead, match=error.partition(": ")[2]):
        engine.submit(engine.prepare(ImageRequest("later", user="c")))


async def test_a_model_that_cannot_load_is_a_clear_error(tiny_config: EngineConfig) -> None:
    for model in ("builtin:nope", "/nonexistent/folder/model"):
        engine = Engine(dataclasses.replace(tiny_config, model=model))
        with pytest.raises(EngineError, match="Could not load model"):
            await engine.start()
        await engine.close()


async def test_the_safety_checker_flags_images_without_blacking_them_out(
    tiny_config: EngineConfig,
) -> None:
    config = dataclasses.replace(tiny_config, model="builtin:tiny-flagging")
    async with Engine(config) as engine:
        assert engine.profile.has_safety_checker
        result = await engine.generate(ImageRequest("anything", seed=5, count=2, user="a"))
        assert [image.flagged for image in result.images] == [True, True]
        assert result.any_flagged
        assert pixels(result.images[0].png).max() > 0  # kept: the operator's policy decides
    async with Engine(dataclasses.replace(config, safety_checker=False)) as engine:
        assert not engine.profile.has_safety_checker
        result = await engine.generate(ImageRequest("anything", seed=5, user="a"))
        assert not result.images[0].flagged


@pytest.fixture
def nan_noise(monkeypatch: pytest.MonkeyPatch) -> int:
    """The fault hook of `tests/reliability/` in this process: the image drawn from the seed
    returned starts from NaN noise (its latents are NaN, as an overflow leaves them)."""
    for name in NOISE_MODULES:
        module = importlib.import_module(name)
        monkeypatch.setattr(module, "randn_tensor", nan_noise_of(module.randn_tensor))
    return NAN_SEED


@pytest.mark.parametrize("scheduling", ["batch", "step"])
async def test_a_nan_image_is_never_delivered_and_fails_only_itself(
    make_engine: EngineFactory, nan_noise: int, scheduling: str
) -> None:
    engine = await make_engine(max_batch_size=8, batch_wait_ms=200, scheduling=scheduling)
    first = ImageRequest("a lighthouse", seed=7, user="a")
    alone = await engine.generate(first)
    # One batch (or one tick group): a request whose second image is NaN, one whose only
    # image is, and a companion from another user.
    partly = engine.submit(
        engine.prepare(ImageRequest("a lighthouse", seed=nan_noise - 1, count=2, user="b"))
    )
    wholly = engine.submit(engine.prepare(ImageRequest("a lighthouse", seed=nan_noise, user="c")))
    other = engine.submit(engine.prepare(dataclasses.replace(first, user="d")))

    result = await partly.result()
    assert [(image.seed, image.index) for image in result.images] == [(nan_noise - 1, 0)]
    assert result.failed == 1
    assert pixels(result.images[0].png).std() > 1  # a real picture, not a blank one
    with pytest.raises(GenerationFailed, match="overflowed") as info:
        await wholly.result()
    assert isinstance(info.value.original, NotFinite)
    companion = await other.result()
    assert companion.failed == 0 and len(companion.images) == 1
    # The NaN rows never leaked into the rows beside them.
    assert np.abs(pixels(companion.images[0].png) - pixels(alone.images[0].png)).max() <= 1
    assert engine.stats.calls >= 2 and max(c.requests for c in engine.stats.recent_calls) >= 3
    assert (engine.stats.not_finite, engine.stats.failed) == (2, 1)
    assert engine.alive


def test_nan_latents_have_no_preview() -> None:
    latents = torch.randn(4, 8, 8)
    assert preview_png(latents, "sd") is not None
    latents[1, 2, 3] = float("nan")
    assert preview_png(latents, "sd") is None
