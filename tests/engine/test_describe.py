"""`engine.describe`: four candidate prompts for a picture from the describe model, on its
own thread, loaded on first use and counted in the memory budget beside the image models.

The tiny random-weight Florence-2 of `engine/tiny_caption.py` (`builtin:tiny-florence2`),
loaded through transformers' real `from_pretrained`: its prompts are gibberish, the
plumbing is real.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import EngineConfig, EngineError, ModelSpec
from engine.config import DescribeConfig
from engine.worker import Worker

from .conftest import EngineFactory

TINY_FLORENCE = DescribeConfig("builtin:tiny-florence2")


def picture(seed: int, size: tuple[int, int] = (70, 50)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


async def test_four_distinct_prompts_the_same_each_time_without_blocking_the_loop(
    make_engine: EngineFactory,
) -> None:
    engine = await make_engine(describe=TINY_FLORENCE)
    assert engine.describer_bytes == 0  # not loaded until asked
    turns = 0

    async def spin() -> None:  # counts the event loop's turns while describing runs
        nonlocal turns
        while True:
            await asyncio.sleep(0)
            turns += 1

    spinner = asyncio.create_task(spin())
    first = await engine.describe(picture(1))
    spinner.cancel()
    assert turns > 10  # the loop kept running: the model ran on another thread
    assert len(first) == 4 and len(set(first)) == 4
    assert all(p and p == " ".join(p.split()) for p in first)
    assert engine.describer_bytes > 0  # counted once loaded
    assert await engine.describe(picture(1)) == first  # beam search: deterministic


async def test_describing_off_is_one_clear_error(make_engine: EngineFactory) -> None:
    engine = await make_engine(describe=DescribeConfig(""))
    with pytest.raises(EngineError, match=r"Describing pictures is off here"):
        await engine.describe(picture(1))


async def test_the_describe_model_fits_beside_the_image_models_or_yields_to_them(
    model_cache: Path,
) -> None:
    """Within `max_memory_gb`: the describe model loads beside one tiny model, is unloaded
    when a second one loads and both would not fit with it, and is then refused in one line
    (nothing half-loaded) until there is room again."""
    plain = EngineConfig(model="builtin:tiny", cache_dir=model_cache)
    sizer = Worker(plain)
    await sizer.start()
    tiny = sizer.size("tiny")
    await sizer.close()
    models = (ModelSpec("tiny", "builtin:tiny"), ModelSpec("tiny-b", "builtin:tiny-b"))
    budget = 2 * tiny + 1000  # two tiny models, not the describe model beside them
    config = dataclasses.replace(
        plain,
        models=models,
        max_loaded_models=2,
        max_memory_gb=budget / 2**30,
        describe=TINY_FLORENCE,
    )
    worker = Worker(config)
    assert await worker.start() == ["tiny-b", "tiny"]
    try:
        with pytest.raises(EngineError, match="does not fit beside the loaded models"):
            await worker.describe(picture(1))
        assert worker.describer_bytes == 0
        await worker.unload("tiny-b")
        assert len(await worker.describe(picture(1))) == 4  # beside one model it fits
        assert 0 < worker.describer_bytes < tiny
        await worker.load("tiny-b")  # the image model comes first
        assert worker.describer_bytes == 0 and worker.is_loaded("tiny-b")
    finally:
        await worker.close()
