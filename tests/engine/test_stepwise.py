"""Step-level scheduling (`EngineConfig(scheduling="step")`) on the real tiny pipelines.

The promise: requests join and leave between denoising steps, and each request's images still
equal the stock diffusers pipeline run alone with the same seed and settings. Stock outputs come
from a second copy of the model loaded by the engine's own loader, called the usual way.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from engine import (
    BatchKey,
    Cancelled,
    Engine,
    EngineConfig,
    GenerationFailed,
    ImageRequest,
    Job,
    JobState,
)
from engine.loader import LoadedModel, load_model
from engine.scheduling.step import StepQueue
from engine.stepper import Sample, Stepper, unsupported_reason

from .conftest import (
    EngineFactory,
    StockModels,
    pixels,
    run_staggered,
    until_running,
)

SQUARE = BatchKey(64, 64, 4, 7.0)


# Helpers
@pytest.fixture
def step_engine(make_engine: EngineFactory) -> EngineFactory:
    """`await step_engine(...)`: a started engine on the step loop (it must not fall back)."""

    async def factory(**overrides: Any) -> Engine:
        engine = await make_engine(scheduling="step", batch_wait_ms=0, **overrides)
        assert engine.scheduling == "step"
        return engine

    return factory


def stock_call(model: LoadedModel, r: ImageRequest, output_type: str) -> Any:
    """The plain pipeline call for one request alone: what a user of diffusers would write."""
    return model.pipe(
        prompt=r.prompt,
        negative_prompt=r.negative_prompt or None,
        num_inference_steps=r.steps,
        guidance_scale=r.guidance,
        width=r.width,
        height=r.height,
        num_images_per_prompt=r.count,
        generator=[torch.Generator("cpu").manual_seed(seed) for seed in r.seeds],
        output_type=output_type,
    ).images


def assert_matches_stock(model: LoadedModel, job: Job, png_images: tuple[Any, ...]) -> None:
    expected = stock_call(model, job.request, "pil")
    assert len(png_images) == len(expected) == job.request.count
    for image, stock in zip(png_images, expected, strict=True):
        ours = pixels(image.png)
        theirs = np.asarray(stock.convert("RGB"), dtype=np.int16)
        assert ours.shape == theirs.shape
        assert np.abs(ours - theirs).max() <= 1, job.request  # within 1/255 per pixel


def resolved(prompt: str, **fields: Any) -> ImageRequest:
    base: dict[str, Any] = {"seed": 1, "steps": 3, "guidance": 7.0, "width": 64, "height": 64}
    return ImageRequest(prompt, **{**base, **fields})


def assert_latents_match_stock(model: LoadedModel, samples: list[Sample]) -> None:
    finals = []
    for sample in samples:
        stock = stock_call(model, sample.request, "latent")
        assert (sample.latents - stock).abs().max().item() < 1e-4, sample.request
        finals.append(sample.latents)
    assert (finals[0][0] - finals[1][0]).abs().max().item() > 0.1  # the check is not vacuous


# Equality with the stock pipeline
@pytest.mark.parametrize("scheduler", ["ddim", "euler", "euler_a", "dpmpp_2m"])
def test_staggered_requests_with_mixed_steps_match_the_stock_pipeline(
    scheduler: str, tiny_config: EngineConfig, stock_models: StockModels
) -> None:
    model = stock_models(tiny_config, scheduler=scheduler)
    stepper = Stepper(load_model(dataclasses.replace(tiny_config, scheduler=scheduler)))
    samples = run_staggered(
        stepper,
        resolved("a lighthouse", seed=5, steps=5, count=2),
        [
            resolved("a harbour", negative_prompt="fog", seed=9, steps=2, guidance=1.0),
            resolved("a boat", seed=11, steps=3, guidance=3.5),
        ],
    )
    assert_latents_match_stock(model, samples)


async def test_a_late_request_joins_running_ones_and_finishes_first(
    step_engine: EngineFactory, tiny_config: EngineConfig, stock_models: StockModels
) -> None:
    engine = await step_engine(scheduler="euler_a", max_batch_size=4)
    long = engine.submit(engine.prepare(ImageRequest("a long walk", seed=3, steps=12, user="a")))
    long.request_preview()
    steps: list[int] = []
    previews: list[bytes] = []
    async for progress in long.updates():
        steps.append(progress.step)
        previews += [progress.preview] if progress.preview else []
        if progress.step >= 2:
            break
    short = engine.submit(
        engine.prepare(
            ImageRequest(
                "a sprint", negative_prompt="rain", seed=7, steps=3, guidance=1.0, user="b"
            )
        )
    )
    pair = engine.submit(
        engine.prepare(ImageRequest("twins", seed=40, steps=4, guidance=5.0, count=2, user="c"))
    )

    short_result = await short.result()
    assert not long.done() and long.progress.step < 12  # it did not wait for the long one
    assert short_result.batch_images == 4  # it shared ticks with both others
    async for progress in long.updates():
        steps.append(progress.step)
    long_result, pair_result = await long.result(), await pair.result()
    assert steps == sorted(steps) and steps[-1] == 12 and long.progress.total_steps == 12
    with Image.open(io.BytesIO(previews[0])) as im:
        assert im.format == "PNG"

    model = stock_models(tiny_config, scheduler="euler_a")
    for job, result in ((long, long_result), (short, short_result), (pair, pair_result)):
        assert_matches_stock(model, job, result.images)
    assert engine.stats.images == 4


async def test_sizes_never_share_a_tick_and_a_wide_image_matches_stock(
    step_engine: EngineFactory, tiny_config: EngineConfig, stock_models: StockModels
) -> None:
    engine = await step_engine()
    square = engine.submit(
        engine.prepare(ImageRequest("square", seed=1, steps=3, guidance=1.0, user="a"))
    )
    wide = engine.submit(
        engine.prepare(
            ImageRequest("wide", seed=2, steps=3, guidance=4.0, width=80, height=64, user="b")
        )
    )
    results = [await square.result(), await wide.result()]
    sizes = [call.size for call in engine.stats.recent_calls if call.kind == "tick"]
    # The group with less work left first (3 x 64² unguided, against 3 x 80x64 with guidance:
    # twice the rows), never mixed in one UNet call.
    assert sizes == [(64, 64)] * 3 + [(80, 64)] * 3
    model = stock_models(tiny_config)
    for job, result in zip((square, wide), results, strict=True):
        assert_matches_stock(model, job, result.images)
    with Image.open(io.BytesIO(results[1].images[0].png)) as im:
        assert im.size == (80, 64)


# Scheduling
async def test_cancelling_a_running_request_frees_its_slot_at_the_next_tick(
    step_engine: EngineFactory,
) -> None:
    engine = await step_engine(max_batch_size=2, max_count=1)
    first = engine.submit(engine.prepare(ImageRequest("first", steps=20, guidance=1.0, user="a")))
    second = engine.submit(engine.prepare(ImageRequest("second", steps=20, guidance=1.0, user="b")))
    waiting = engine.submit(
        engine.prepare(ImageRequest("waiting", steps=2, guidance=1.0, user="c"))
    )
    async for progress in first.updates():
        if progress.step >= 2:
            break
    assert waiting.state is JobState.QUEUED and waiting.progress.position == 1
    first.cancel()
    with pytest.raises(Cancelled):
        await first.result()
    assert first.progress.step < 20
    await waiting.result()
    assert not second.done()  # the slot was reused while the other request still ran
    await second.result()
    assert engine.stats.cancelled == 1


async def test_a_flood_from_one_user_does_not_starve_another(step_engine: EngineFactory) -> None:
    engine = await step_engine(max_batch_size=2, max_count=1)
    flood = [
        engine.submit(
            engine.prepare(ImageRequest(f"flood {i}", steps=2, guidance=1.0, user="flood"))
        )
        for i in range(6)
    ]
    await until_running(flood[0])
    solo = engine.submit(engine.prepare(ImageRequest("solo", steps=2, guidance=1.0, user="solo")))
    assert solo.progress.position == 1  # ahead of the flood's queued requests
    await solo.result()
    assert solo.started_at is not None
    later = [job.started_at for job in flood[2:]]
    assert all(t is None or t >= solo.started_at for t in later)
    for job in flood:
        await job.result()


async def test_the_group_with_the_least_work_left_runs_first(
    step_engine: EngineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Groups of different sizes cannot share a tick: the one that finishes soonest runs
    first (its requests leave sooner), not turn about; past the ageing bound, the group that
    waited longest runs, so the longer one is never starved."""
    import engine.scheduling.step as step

    engine = await step_engine(max_batch_size=4)

    def ticks() -> list[tuple[int, int]]:
        return [call.size for call in engine.stats.recent_calls if call.kind == "tick"]

    for bound, expected in ((step.MAX_GROUP_WAIT, [(96, 96)] * 3), (0.0, [(64, 64), (96, 96)])):
        monkeypatch.setattr(step, "MAX_GROUP_WAIT", bound)  # 0: every group overdue
        before = len(ticks())
        long = engine.submit(engine.prepare(ImageRequest("a long one", steps=10, user="a")))
        short = engine.prepare(ImageRequest("short", steps=3, width=96, height=96, user="b"))
        await engine.submit(short).result()  # 3 x 96² of work, against 10 x 64²
        assert ticks()[before : before + len(expected)] == expected
        await long.result()


async def test_a_short_request_joining_a_long_one_is_not_kept_behind_another_group(
    step_engine: EngineFactory,
) -> None:
    """What a group has left is counted as a request sees it: a 2-step request that joins a
    running 20-step one finishes after 2 shared ticks, sooner than a 6-step request of
    another size would, so its group runs first (counted as the group's total, 22 steps,
    it would wait behind all 6 ticks of the other)."""
    engine = await step_engine(max_batch_size=4)

    def ticks() -> list[tuple[int, int]]:
        return [call.size for call in engine.stats.recent_calls if call.kind == "tick"]

    long = engine.submit(engine.prepare(ImageRequest("a long one", steps=20, user="a")))
    async for progress in long.updates():
        if progress.step >= 1:
            break  # running, 19 steps left
    before = len(ticks())
    wide = engine.submit(engine.prepare(ImageRequest("wide", steps=6, width=96, height=96)))
    short = engine.submit(engine.prepare(ImageRequest("short", steps=2, user="b")))
    await short.result()
    shared = ticks()[before:]
    assert (96, 96) not in shared[: shared.index((64, 64)) + 2], shared
    await wide.result()
    await long.result()


async def test_a_large_request_is_not_overtaken_by_smaller_ones() -> None:
    queue = StepQueue(max_queue=10)

    @dataclasses.dataclass(eq=False)
    class Item:
        user: str
        images: int = 1
        key: BatchKey = SQUARE

    big, small, other_size = Item("a", images=4), Item("b"), Item("c", key=BatchKey(80, 64, 4, 7))
    for item in (big, small, other_size):
        queue.put(item)
    assert queue.take(SQUARE.group, room=2) == []  # the 4-image request waits at the head...
    assert queue.take(other_size.key.group, room=4) == [other_size]  # ...not blocking others
    assert queue.take(SQUARE.group, room=4) == [big]
    assert queue.take(SQUARE.group, room=4) == [small]


# Failures
async def test_a_failing_request_fails_alone_and_the_others_match_stock(
    step_engine: EngineFactory, tiny_config: EngineConfig, stock_models: StockModels
) -> None:
    engine = await step_engine()
    poison = "a poisoned prompt"

    def install(pipe: Any) -> None:
        bad = pipe.encode_prompt(poison, pipe.device, 1, False)[0][0]

        def hook(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
            rows = kwargs["encoder_hidden_states"]
            if any(torch.allclose(row, bad, atol=1e-5) for row in rows):
                raise RuntimeError("the UNet cannot take this prompt")

        pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)

    await engine.run_in_worker(install)
    good = [
        engine.submit(engine.prepare(resolved(f"fine {i}", seed=i, user=f"u{i}"))) for i in range(3)
    ]
    bad = engine.submit(engine.prepare(resolved(poison, user="mallory")))
    with pytest.raises(GenerationFailed) as info:
        await bad.result()
    assert isinstance(info.value.original, RuntimeError)
    results = [await job.result() for job in good]
    assert engine.stats.splits == 2 and engine.stats.failed == 1  # 4 -> 2 + 2 -> 1 + 1
    model = stock_models(tiny_config)
    for job, result in zip(good, results, strict=True):
        assert_matches_stock(model, job, result.images)  # nobody was stepped twice
    assert engine.alive


async def test_out_of_memory_splits_once_then_chunks_later_ticks(
    step_engine: EngineFactory,
) -> None:
    engine = await step_engine()
    requests = [resolved(f"robot {i}", seed=i, user=f"u{i}") for i in range(4)]
    alone = [await engine.generate(r) for r in requests]

    def limit_rows(pipe: Any) -> None:
        def hook(module: Any, args: tuple[Any, ...]) -> None:
            if args[0].shape[0] > 2:  # guidance: one image is two rows
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")

        pipe.unet.register_forward_pre_hook(hook)

    await engine.run_in_worker(limit_rows)
    jobs = [engine.submit(engine.prepare(r)) for r in requests]
    results = [await job.result() for job in jobs]
    assert engine.stats.splits == 3  # the first tick only: 4 -> 2 + 2 -> 1 + 1 + 1 + 1
    for a, b in zip(alone, results, strict=True):
        assert np.abs(pixels(a.images[0].png) - pixels(b.images[0].png)).max() <= 1


async def test_counting_tokens_on_the_loop_leaves_the_workers_tokenizer_alone(
    make_engine: EngineFactory,
) -> None:
    """`submit` counts prompt tokens on the loop while the worker may be encoding a prompt.

    A fast tokenizer keeps padding on a shared backend and `tokenize` switches it off: a
    prompt encoded at that moment came out 11 tokens long instead of 77 (seen in the trace
    benchmark as a failed tick). Counting must use its own tokenizer.
    """
    engine = await make_engine()
    backend = await engine.run_in_worker(lambda pipe: pipe.tokenizer._tokenizer)
    await engine.run_in_worker(lambda pipe: backend.enable_padding(length=77))  # mid-encode
    engine.prepare(ImageRequest("a prompt to count"))
    assert await engine.run_in_worker(lambda pipe: backend.padding) is not None


# Model families
def test_sdxl_requests_match_the_stock_pipeline(
    sdxl_folder: Path, tiny_config: EngineConfig, stock_models: StockModels
) -> None:
    config = dataclasses.replace(tiny_config, model=str(sdxl_folder), scheduler="euler_a")
    model = stock_models(config)
    assert type(model.pipe).__name__ == "StableDiffusionXLPipeline"
    stepper = Stepper(load_model(config))
    samples = run_staggered(
        stepper,
        resolved("a mountain", seed=3, steps=4, guidance=5.0, count=2),
        [
            resolved("a valley", negative_prompt="snow", seed=8, steps=2, guidance=6.0),
            resolved("a river", seed=12, steps=3, guidance=1.0),
        ],
    )
    assert_latents_match_stock(model, samples)


async def test_sdxl_runs_through_the_step_loop(
    sdxl_folder: Path, tiny_config: EngineConfig, stock_models: StockModels
) -> None:
    config = dataclasses.replace(tiny_config, model=str(sdxl_folder), scheduling="step")
    async with Engine(config) as engine:
        assert engine.profile.family == "sdxl" and engine.scheduling == "step"
        first = engine.submit(
            engine.prepare(ImageRequest("a desert", seed=4, steps=4, guidance=5.0, user="a"))
        )
        await until_running(first)
        second = engine.submit(
            engine.prepare(ImageRequest("an oasis", seed=9, steps=2, guidance=5.0, user="b"))
        )
        results = await asyncio.gather(first.result(), second.result())
    model = stock_models(dataclasses.replace(config, scheduling="batch"))
    for job, result in zip((first, second), results, strict=True):
        assert_matches_stock(model, job, result.images)


async def test_an_lcm_unet_steps_too_and_matches_stock(
    tiny_config: EngineConfig, tmp_path: Path
) -> None:
    """A UNet with a guidance embedding (LCM-style) takes its conditioning per sample too, so
    it runs step by step like any other (the stock pipeline computes it for each request)."""
    from diffusers import UNet2DConditionModel

    base = load_model(tiny_config)
    unet_config = {k: v for k, v in base.pipe.unet.config.items() if not k.startswith("_")}
    torch.manual_seed(0)
    base.pipe.unet = UNet2DConditionModel(**{**unet_config, "time_cond_proj_dim": 32})  # LCM
    assert unsupported_reason(base) is None
    base.pipe.save_pretrained(tmp_path)

    config = dataclasses.replace(tiny_config, model=str(tmp_path), scheduling="step")
    request = ImageRequest("still works", seed=4, steps=2, guidance=3.0, user="a")
    async with Engine(config) as engine:
        assert engine.scheduling == "step"
        result = await engine.generate(request)
    assert len(result.images) == 1 and engine.stats.ticks == 2
    stock = (
        load_model(config)
        .pipe(
            "still works",
            num_inference_steps=2,
            guidance_scale=3.0,
            width=result.images[0].width,
            height=result.images[0].height,
            generator=[torch.Generator("cpu").manual_seed(4)],
        )
        .images[0]
    )
    assert np.abs(pixels(result.images[0].png) - np.asarray(stock, dtype=np.int16)).max() <= 1


def test_scheduling_is_validated() -> None:
    assert EngineConfig().scheduling == "batch"
    with pytest.raises(ValueError, match="scheduling must be batch or step"):
        EngineConfig(scheduling="token")
