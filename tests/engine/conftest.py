"""Engine fixtures: a started engine on the real tiny pipeline, configured per test."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from engine import Engine, EngineConfig, Job, JobState

EngineFactory = Callable[..., Awaitable[Engine]]


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
