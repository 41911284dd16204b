"""The engine on the real tiny pipeline: batching, progress, cancellation, the event loop."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import numpy as np
import pytest
from PIL import Image

from engine import Busy, Cancelled, ImageRequest, JobState, ShuttingDown, read_parameters

from .conftest import EngineFactory, pixels, until_running


async def test_a_batched_image_equals_the_same_request_alone(make_engine: EngineFactory) -> None:
    engine = await make_engine(max_batch_size=8, batch_wait_ms=200)
    requests = [
        ImageRequest("a robot painting", seed=11, user="alice", count=2),
        ImageRequest("a watercolour cat", negative_prompt="blurry", seed=22, user="bob"),
        ImageRequest("a castle at night", seed=33, user="carol"),
    ]
    jobs = [engine.submit(engine.prepare(r)) for r in requests]
    batched = [await job.result() for job in jobs]
    assert {r.batch_images for r in batched} == {4}  # they really shared one pipeline call

    for request, together in zip(requests, batched, strict=True):
        alone = await engine.generate(request)
        assert alone.batch_images == request.count
        for a, b in zip(alone.images, together.images, strict=True):
            assert a.seed == b.seed
            assert np.abs(pixels(a.png) - pixels(b.png)).max() <= 1  # at most 1/255

    # Different seeds give different images (the comparison above is not vacuous).
    assert np.abs(pixels(batched[0].images[0].png) - pixels(batched[0].images[1].png)).max() > 1


async def test_images_carry_their_parameters_and_the_drawn_seed(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    job = engine.submit(
        engine.prepare(ImageRequest("a robot, painting", negative_prompt="ugly", user="u"))
    )
    assert job.request.seed is not None  # drawn at submit, so the caller can report it
    result = await job.result()
    image = result.images[0]
    with Image.open(io.BytesIO(image.png)) as im:
        assert im.format == "PNG" and im.size == (64, 64)
    params = read_parameters(image.png)
    assert params is not None
    assert (params.prompt, params.negative_prompt) == ("a robot, painting", "ugly")
    assert (params.seed, params.steps, params.cfg_scale) == (job.request.seed, 4, 7.0)
    assert (params.width, params.height, params.model, params.sampler) == (
        64,
        64,
        "tiny",  # the model's name
        "DDIM",
    )


async def test_progress_reports_queue_position_steps_and_a_preview(
    make_engine: EngineFactory,
) -> None:
    engine = await make_engine(max_batch_size=1, max_count=1, batch_wait_ms=0)
    first = engine.submit(engine.prepare(ImageRequest("first", seed=1, steps=12, user="a")))
    second = engine.submit(engine.prepare(ImageRequest("second", seed=2, steps=6, user="b")))
    third = engine.submit(engine.prepare(ImageRequest("third", seed=3, steps=6, user="c")))
    assert (second.progress.position, third.progress.position) == (2, 3)

    third.request_preview()
    seen_positions: list[int] = []
    steps: list[int] = []
    previews: list[bytes] = []
    async for progress in third.updates():
        if progress.state is JobState.QUEUED and progress.position is not None:
            seen_positions.append(progress.position)
        if progress.state is JobState.RUNNING:
            steps.append(progress.step)
            if progress.preview is not None and not previews:
                previews.append(progress.preview)
    assert seen_positions[0] == 3 and seen_positions[-1] == 1  # moved up the line
    assert steps == sorted(steps) and steps[-1] == 6
    assert third.state is JobState.DONE
    with Image.open(io.BytesIO(previews[0])) as im:
        assert im.format == "PNG" and max(im.size) == 256
    await first.result()
    await second.result()


async def test_a_full_queue_refuses_at_once(make_engine: EngineFactory) -> None:
    engine = await make_engine(max_queue=2, max_batch_size=1, max_count=1, batch_wait_ms=0)
    running = engine.submit(engine.prepare(ImageRequest("long", steps=40, user="a")))
    await until_running(running)
    queued = [engine.submit(engine.prepare(ImageRequest("q", user=f"u{i}"))) for i in range(2)]
    with pytest.raises(Busy, match="queue is full"):
        engine.submit(engine.prepare(ImageRequest("one too many", user="z")))
    running.cancel()
    for job in queued:
        await job.result()


async def test_cancelling_a_queued_job_takes_it_out_of_the_queue(
    make_engine: EngineFactory,
) -> None:
    engine = await make_engine(max_batch_size=1, max_count=1, batch_wait_ms=0)
    running = engine.submit(engine.prepare(ImageRequest("running", steps=20, user="a")))
    await until_running(running)
    waiting = engine.submit(engine.prepare(ImageRequest("waiting", user="b")))
    assert engine.queue_depth >= 1
    assert waiting.cancel()
    with pytest.raises(Cancelled):
        await waiting.result()
    assert waiting.state is JobState.CANCELLED
    assert engine.queue_depth == 0
    assert not waiting.cancel()  # already over
    await running.result()
    assert engine.stats.images == 1


async def test_cancelling_a_whole_running_batch_interrupts_it(make_engine: EngineFactory) -> None:
    engine = await make_engine(max_steps=200)
    job = engine.submit(engine.prepare(ImageRequest("long", steps=200, user="a")))
    last_step = 0
    async for progress in job.updates():
        if progress.state is JobState.RUNNING and progress.step >= 2 and not job.cancel_requested:
            job.cancel()
        last_step = max(last_step, progress.step)
    with pytest.raises(Cancelled):
        await job.result()
    assert last_step < 200  # denoising stopped early instead of running all 200 steps
    after = await engine.generate(ImageRequest("next", user="b"))  # the engine goes on
    assert len(after.images) == 1


async def test_the_event_loop_keeps_ticking_while_a_batch_runs(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    job = engine.submit(engine.prepare(ImageRequest("busy", steps=30, count=4, user="a")))
    loop = asyncio.get_running_loop()
    gaps: list[float] = []

    async def ticker() -> None:
        last = loop.time()
        while not job.done():
            await asyncio.sleep(0.005)  # measuring loop lag, not waiting for an event
            now = loop.time()
            gaps.append(now - last)
            last = now

    await asyncio.gather(ticker(), job.result())
    assert len(gaps) > 20
    # torch runs on the worker thread: the loop is never blocked for a whole step or batch.
    assert max(gaps) < 0.5, f"event loop stalled for {max(gaps):.3f} s"
    assert engine.stats.batches == 1


async def test_close_finishes_the_running_batch_and_releases_the_queue(
    make_engine: EngineFactory,
) -> None:
    engine = await make_engine(max_batch_size=1, max_count=1, batch_wait_ms=0)
    running = engine.submit(engine.prepare(ImageRequest("running", steps=10, user="a")))
    await until_running(running)
    queued = engine.submit(engine.prepare(ImageRequest("queued", user="b")))
    await engine.close()
    assert len((await running.result()).images) == 1  # finished, not thrown away
    with pytest.raises(ShuttingDown):  # not a failure: a front end keeps it for a restart
        await queued.result()
    with pytest.raises(ShuttingDown):
        engine.submit(engine.prepare(ImageRequest("later", user="c")))


@pytest.mark.parametrize("scheduling", ["batch", "step"])
async def test_close_fails_what_still_runs_after_the_grace_period(
    make_engine: EngineFactory, scheduling: str
) -> None:
    engine = await make_engine(max_steps=100, scheduling=scheduling)
    assert engine.scheduling == scheduling
    running = engine.submit(engine.prepare(ImageRequest("long", steps=100, user="a")))
    await until_running(running)
    await engine.close(grace_s=0.01)
    with pytest.raises(ShuttingDown):  # ended, not left hanging
        await asyncio.wait_for(running.result(), 1.0)
    assert engine.running == ()


async def test_stats_count_pipeline_calls_and_ticks_apart(make_engine: EngineFactory) -> None:
    batch = await make_engine()
    await batch.generate(ImageRequest("one call", steps=3, count=2, user="a"))
    assert (batch.stats.batches, batch.stats.ticks, batch.stats.batch_sizes) == (1, 0, [2])
    step = await make_engine(scheduling="step")
    await step.generate(ImageRequest("three ticks", steps=3, count=2, user="a"))
    assert (step.stats.batches, step.stats.ticks, step.stats.batch_sizes) == (0, 3, [])
    assert [call.images for call in step.stats.recent_calls] == [2, 2, 2]
    assert step.stats.calls == 3 and step.stats.call_images == 6


@pytest.mark.parametrize("scheduling", ["batch", "step"])
async def test_a_burst_is_placed_in_line_once_it_settles_not_at_every_request(
    make_engine: EngineFactory, monkeypatch: pytest.MonkeyPatch, scheduling: str
) -> None:
    """Two hundred requests at once: working every queued job's place out again at each one
    would be 200 x 200 places on the event loop. The line is worked out at most every
    `POSITIONS_EVERY` seconds while it changes, and every job ends up shown its exact place."""
    from engine.queue import FairQueue

    engine = await make_engine(max_queue=250, max_batch_size=4, scheduling=scheduling)
    running = engine.submit(engine.prepare(ImageRequest("long", steps=40, user="a")))
    await until_running(running)
    lines = 0
    line = FairQueue.line

    def counted(self: FairQueue[Any]) -> Any:
        nonlocal lines
        lines += 1
        return line(self)

    monkeypatch.setattr(FairQueue, "line", counted)
    burst = [
        engine.submit(engine.prepare(ImageRequest(f"p{i}", steps=1, user=f"u{i}")))
        for i in range(200)
    ]
    assert lines < 70  # exact for the first 64, then once per POSITIONS_EVERY at most
    async for progress in burst[-1].updates():  # placed once the burst settled
        if progress.position == engine.queue_depth:
            break
    queued = [job.progress.position for job in burst if job.progress.position is not None]
    assert sorted(queued) == list(range(1, engine.queue_depth + 1))
    running.cancel()
    for job in burst:
        job.cancel()
