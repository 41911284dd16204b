"""Image-to-image as a first-class request, in both scheduling modes, on the real tiny models.

The promise is the text-to-image one: each request's images equal diffusers' stock
image-to-image pipeline run alone with the same seed and settings, whether it was batched
with others (batch mode), or entered the running batch at its own first timestep beside
text-to-image requests (step mode).
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from engine import EngineConfig, ImageRequest, InvalidRequest, Job, Limits, ModelProfile
from engine.loader import LoadedModel, image_to_image, load_model
from engine.request import DEFAULT_STRENGTH, validate
from engine.sizing import fit_aspect
from engine.stepper import Sample, Stepper

from .conftest import (
    EngineFactory,
    StockModels,
    pixels,
    run_staggered,
    until_running,
)


def picture(seed: int, size: tuple[int, int] = (64, 64)) -> Image.Image:
    """A noisy RGB picture (distinct per seed) to start from."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def resolved(prompt: str, **fields: Any) -> ImageRequest:
    base: dict[str, Any] = {"seed": 1, "steps": 4, "guidance": 7.0, "width": 64, "height": 64}
    return ImageRequest(prompt, **{**base, **fields})


def from_image(prompt: str, init: Image.Image, strength: float, **fields: Any) -> ImageRequest:
    return resolved(prompt, init_image=init, strength=strength, **fields)


def stock(model: LoadedModel, r: ImageRequest, output_type: str) -> Any:
    """The plain diffusers call for one request alone, as a diffusers user would write it."""
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in r.seeds]
    common: dict[str, Any] = {
        "prompt": r.prompt,
        "negative_prompt": r.negative_prompt or None,
        "num_inference_steps": r.steps,
        "guidance_scale": r.guidance,
        "num_images_per_prompt": r.count,
        "generator": generators,
        "output_type": output_type,
    }
    if r.init_image is None:
        return model.pipe(width=r.width, height=r.height, **common).images
    return image_to_image(model)(image=r.init_image, strength=r.strength, **common).images


def assert_latents_match_stock(model: LoadedModel, samples: list[Sample]) -> None:
    for sample in samples:
        expected = stock(model, sample.request, "latent")
        assert (sample.latents - expected).abs().max().item() < 1e-4, sample.request


def assert_pixels_match_stock(model: LoadedModel, job: Job, images: tuple[Any, ...]) -> None:
    expected = stock(model, job.request, "pil")
    assert len(images) == len(expected) == job.request.count
    for image, theirs in zip(images, expected, strict=True):
        ours = pixels(image.png)
        assert np.abs(ours - np.asarray(theirs.convert("RGB"), dtype=np.int16)).max() <= 1


# Step mode: an image-to-image request enters at its own first timestep
@pytest.mark.parametrize("scheduler", ["ddim", "euler", "euler_a", "dpmpp_2m"])
def test_staggered_image_requests_beside_text_requests_match_stock(
    scheduler: str, tiny_config: EngineConfig, stock_models: StockModels
) -> None:
    model = stock_models(tiny_config, scheduler=scheduler)
    stepper = Stepper(load_model(dataclasses.replace(tiny_config, scheduler=scheduler)))
    samples = run_staggered(
        stepper,
        resolved("a lighthouse", seed=5, steps=5, count=2),
        [
            from_image("a harbour", picture(1), 0.5, seed=9, steps=6, count=2),
            from_image("a boat", picture(2), 0.8, seed=11, steps=4, guidance=1.0),
            resolved("a gull", negative_prompt="fog", seed=13, steps=3, guidance=3.5),
        ],
    )
    assert [s.calls for s in samples[1:3]] == [3, 3]  # only the steps after `strength`
    assert_latents_match_stock(model, samples)
    # Not vacuous: the picture matters, and so does the strength.
    other = from_image("a harbour", picture(3), 0.5, seed=9, steps=6, count=2)
    weaker = from_image("a harbour", picture(1), 0.3, seed=9, steps=6, count=2)
    for changed in (other, weaker):
        assert (stock(model, changed, "latent") - samples[1].latents).abs().max().item() > 0.05


def test_sdxl_image_requests_match_stock(
    sdxl_folder: Path, tiny_config: EngineConfig, stock_models: StockModels
) -> None:
    config = dataclasses.replace(tiny_config, model=str(sdxl_folder), scheduler="euler_a")
    model = stock_models(config)
    stepper = Stepper(load_model(config))
    samples = run_staggered(
        stepper,
        resolved("a mountain", seed=3, steps=4, guidance=5.0),
        [
            from_image("a valley", picture(4), 0.6, seed=8, steps=5, guidance=6.0, count=2),
            from_image("a river", picture(5), 0.9, seed=12, steps=3, guidance=1.0),
        ],
    )
    assert_latents_match_stock(model, samples)


async def test_step_mode_runs_image_and_text_requests_in_shared_ticks(
    make_engine: EngineFactory, tiny_config: EngineConfig, stock_models: StockModels
) -> None:
    engine = await make_engine(scheduling="step", batch_wait_ms=0)
    text = engine.submit(
        engine.prepare(ImageRequest("a kite", seed=2, steps=6, guidance=7.0, user="a"))
    )
    await until_running(text)
    image = engine.submit(
        engine.prepare(
            ImageRequest(
                "a kite at dusk", seed=4, steps=6, guidance=7.0, init_image=picture(6), user="b"
            )
        )
    )
    first, second = await asyncio.gather(text.result(), image.result())
    shared = [c for c in engine.stats.recent_calls if c.images == 2]
    assert shared, engine.stats.recent_calls  # at least one UNet tick carried both
    model = stock_models(tiny_config)
    assert image.request.strength == DEFAULT_STRENGTH and image.request.width == 64
    assert_pixels_match_stock(model, text, first.images)
    assert_pixels_match_stock(model, image, second.images)


# Batch mode: requests that share size, steps, guidance and strength share a call
async def test_batch_mode_batches_image_requests_and_each_matches_stock(
    make_engine: EngineFactory, tiny_config: EngineConfig, stock_models: StockModels
) -> None:
    engine = await make_engine(scheduling="batch", batch_wait_ms=200, max_batch_size=8)
    jobs = [
        engine.submit(
            engine.prepare(from_image("a fox", picture(7), 0.5, seed=1, user="a", count=2))
        ),
        engine.submit(engine.prepare(from_image("a hare", picture(8), 0.5, seed=5, user="b"))),
        engine.submit(
            engine.prepare(resolved("a stoat", seed=9, user="c"))
        ),  # text: a call of its own
    ]
    results = await asyncio.gather(*(job.result() for job in jobs))
    calls = [c.images for c in engine.stats.recent_calls]
    assert sorted(calls) == [1, 3], calls  # both image requests in one call, the text alone
    model = stock_models(tiny_config)
    for job, result in zip(jobs, results, strict=True):
        assert_pixels_match_stock(model, job, result.images)


# Validation
PROFILE = ModelProfile(
    name="m", family="sd", native_size=512, default_steps=25, default_guidance=7.0, sampler="DDIM"
)
TURBO = dataclasses.replace(PROFILE, default_steps=1, default_guidance=0.0)


def check(request: ImageRequest, profile: ModelProfile = PROFILE) -> ImageRequest:
    return validate(request, Limits(), profile, lambda text: 1)[0]


def test_image_requests_are_validated_and_sized_from_the_picture() -> None:
    wide = check(ImageRequest("x", init_image=picture(1, (300, 150))))
    assert (wide.width, wide.height) == (728, 360) and wide.strength == DEFAULT_STRENGTH
    assert wide.init_image is not None and wide.init_image.size == (728, 360)
    given = check(ImageRequest("x", init_image=picture(1, (300, 150)), width=256, height=256))
    assert given.init_image is not None and given.init_image.size == (256, 256)
    # A turbo model's one step would run none at strength 0.6: two steps, one of them run.
    turbo = check(ImageRequest("x", init_image=picture(1)), TURBO)
    assert turbo.steps == 2 and turbo.denoising_steps == 1
    for strength in (0.0, 0.01, 1.5, float("nan")):
        with pytest.raises(InvalidRequest, match=r"Strength must be between 0\.05 and 1"):
            check(ImageRequest("x", init_image=picture(1), strength=strength))
    with pytest.raises(InvalidRequest, match="only when starting from an image"):
        check(ImageRequest("x", strength=0.5))
    with pytest.raises(InvalidRequest, match="leaves no step to run"):
        check(ImageRequest("x", init_image=picture(1), steps=4, strength=0.1))


@pytest.mark.parametrize(
    ("aspect", "area", "multiple", "expected"),
    [
        (1.0, 512**2, 8, (512, 512)),
        (16 / 9, 512**2, 8, (680, 384)),
        (2 / 3, 768**2, 8, (624, 944)),
        (16 / 9, 1024**2, 64, (1024, 576)),  # capped at 1024 wide, SDXL's multiples of 64
    ],
)
def test_aspect_ratios_keep_the_native_area_within_the_limits(
    aspect: float, area: int, multiple: int, expected: tuple[int, int]
) -> None:
    width, height = fit_aspect(aspect, area, Limits(), multiple=multiple)
    assert (width, height) == expected
    assert width % multiple == 0 and height % multiple == 0
