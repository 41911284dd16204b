"""Today's diffusion transformers (FLUX.1 schnell and dev, Chroma), batched across users step
by step like SD: each image equals the stock diffusers pipeline run alone.

The tiny random-weight pipelines of `engine/tiny_dit.py` (T5 tokenizer built locally),
loaded through the real `from_pretrained`, compared with a second copy of the model called
the usual way, with the same seed and settings.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from engine import EngineConfig, ImageRequest
from engine.families import family_named
from engine.loader import LoadedModel, image_to_image, load_model
from engine.stepper import Sample, Stepper

from .conftest import (
    EngineFactory,
    StockModels,
    assert_stock_images_in_both_modes,
    assert_weights_apply_alone_and_batched,
    rows_of,
    run_staggered,
    scaled,
)

FAMILIES = {
    "builtin:tiny-flux": "flux",
    "builtin:tiny-flux-dev": "flux",
    "builtin:tiny-chroma": "chroma",
}


def resolved(prompt: str, **fields: Any) -> ImageRequest:
    base: dict[str, Any] = {"seed": 1, "steps": 3, "guidance": 3.5, "width": 64, "height": 64}
    return ImageRequest(prompt, **{**base, **fields})


def picture(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))


def stock(model: LoadedModel, r: ImageRequest, output_type: str) -> Any:
    """The stock pipeline for one request alone, as a diffusers user would call it: one
    prompt (and picture) per image, one generator per image."""
    kwargs: dict[str, Any] = {
        "prompt": [r.prompt] * r.count,
        "num_inference_steps": r.steps,
        "guidance_scale": r.guidance,
        "height": r.height,
        "width": r.width,
        "generator": [torch.Generator("cpu").manual_seed(seed) for seed in r.seeds],
        "output_type": output_type,
    }
    if model.profile.family == "chroma":
        kwargs["negative_prompt"] = [r.negative_prompt] * r.count
    if r.init_image is None:
        return model.pipe(**kwargs).images
    pictures = [r.init_image] * r.count
    return image_to_image(model)(image=pictures, strength=r.strength, **kwargs).images


@pytest.fixture
def config_of(model_cache: Any) -> Any:
    def make(source: str, **overrides: Any) -> EngineConfig:
        return EngineConfig(model=source, cache_dir=model_cache, batch_wait_ms=20, **overrides)

    return make


@pytest.mark.parametrize("source", list(FAMILIES))
def test_staggered_requests_of_any_steps_and_guidance_equal_the_stock_pipeline(
    source: str, config_of: Any, stock_models: StockModels
) -> None:
    config = config_of(source)
    model = stock_models(config)
    assert model.profile.family == FAMILIES[source]
    stepper = Stepper(load_model(config))
    chroma = FAMILIES[source] == "chroma"
    samples: list[Sample] = run_staggered(
        stepper,
        resolved("a robot painting", seed=5, steps=5, count=2),
        [
            resolved("a castle in the sky", seed=9, steps=3, guidance=5.0),
            resolved("a red dragon", negative_prompt="blurry", seed=13, steps=4, guidance=1.0),
        ],
    )
    finals = []
    for sample in samples:
        expected = stock(model, sample.request, "latent")
        assert sample.latents is not None
        assert (sample.latents - expected).abs().max().item() < 1e-4, sample.request
        finals.append(sample.latents)
    # Not vacuous: another seed or prompt gives other latents.
    assert (finals[0][0] - finals[0][1]).abs().max().item() > 0.05
    # Chroma's guidance over 1 calls its transformer twice a step (true CFG), in one tick.
    assert [s.calls for s in samples] == [10 if chroma else 5, 6 if chroma else 3, 4]


@pytest.mark.parametrize("source", list(FAMILIES))
@pytest.mark.parametrize("scheduling", ["step", "batch"])
async def test_the_engine_makes_the_stock_images_in_both_modes(
    source: str, scheduling: str, make_engine: EngineFactory, config_of: Any, stock_models: Any
) -> None:
    config = config_of(source)
    engine = await make_engine(
        model=source, scheduling=scheduling, max_batch_size=4, batch_wait_ms=100
    )
    assert engine.scheduling == scheduling and engine.profile.family == FAMILIES[source]
    await assert_stock_images_in_both_modes(engine, stock_models(config), stock, "two owls")


@pytest.mark.parametrize("source", ["builtin:tiny-flux-dev", "builtin:tiny-chroma"])
def test_image_to_image_beside_text_requests_equals_stock(
    source: str, config_of: Any, stock_models: StockModels
) -> None:
    config = config_of(source)
    model = stock_models(config)
    stepper = Stepper(load_model(config))
    samples = run_staggered(
        stepper,
        resolved("a harbour", seed=2, steps=4),
        [
            resolved("a boat", init_image=picture(1), strength=0.6, seed=7, steps=5, count=2),
            resolved("a gull", init_image=picture(2), strength=0.9, seed=4, steps=3),
        ],
    )
    for sample in samples:
        expected = stock(model, sample.request, "latent")
        assert sample.latents is not None
        assert (sample.latents - expected).abs().max().item() < 1e-4, sample.request
    # Only the steps after `strength` (FLUX rounds 3 x 0.9 up, SD would down), twice with
    # Chroma's guidance over 1.
    assert [s.calls for s in samples[1:]] == [[3, 3], [6, 6]][source.endswith("chroma")]


def test_a_negative_prompt_is_read_only_by_the_families_that_read_one(
    config_of: Any, stock_models: StockModels
) -> None:
    flux = stock_models(config_of("builtin:tiny-flux-dev"))
    chroma = stock_models(config_of("builtin:tiny-chroma"))
    assert not flux.profile.negative_prompt and chroma.profile.negative_prompt
    assert flux.profile.img2img and chroma.profile.img2img
    assert flux.profile.multiple == 16
    assert dataclasses.replace(flux.profile).default_steps == 4


@pytest.mark.parametrize("source", ["builtin:tiny-flux", "builtin:tiny-chroma"])
def test_weighted_t5_rows_are_the_stock_rows_times_their_weights(
    source: str, config_of: Any, stock_models: StockModels
) -> None:
    """sd_embed's T5 weighting (`engine/weighting_t5.py`), against the stock `encode_prompt`
    of the plain prompt: each weighted token's row times its weight (the mean not restored),
    every other row, FLUX.1's pooled CLIP output and Chroma's masks exactly the stock ones;
    without weights, exactly the stock embeddings."""
    pipe = stock_models(config_of(source)).pipe
    chroma = FAMILIES[source] == "chroma"
    family, t5 = family_named(FAMILIES[source]), pipe.tokenizer if chroma else pipe.tokenizer_2
    plain, negative = "a red fox in snow", "blurry"
    args: dict[str, Any] = {"device": "cpu", "count": 2, "cfg": True}
    with torch.inference_mode():
        ours = family.embeddings(pipe, "a (red:1.4) fox in [snow]", "(blurry:0.6)", **args)
        unit = family.embeddings(pipe, "a (red:1.0) fox in snow", negative, **args)
        if chroma:
            cond, _, mask, uncond, _, negative_mask = pipe.encode_prompt(
                plain, negative, device="cpu", num_images_per_prompt=2
            )
        else:
            cond, pooled, _ = pipe.encode_prompt(plain, None, device="cpu", num_images_per_prompt=2)

    def rows(text: str, word: str, weight: float) -> dict[int, float]:
        piece = t5(word, add_special_tokens=False).input_ids
        return dict.fromkeys(rows_of(t5(text).input_ids, piece), weight)

    assert torch.equal(unit.cond, cond)
    assert not torch.equal(ours.cond, cond)
    expected = scaled(cond, rows(plain, "red", 1.4) | rows(plain, "snow", 1 / 1.1))
    torch.testing.assert_close(ours.cond, expected)
    if chroma:
        assert ours.uncond is not None and unit.uncond is not None
        assert torch.equal(unit.uncond, uncond)
        torch.testing.assert_close(ours.uncond, scaled(uncond, rows(negative, negative, 0.6)))
        for embeddings in (ours, unit):
            assert torch.equal(embeddings.mask, mask)
            assert torch.equal(embeddings.negative_mask, negative_mask)
    else:  # FLUX.1 reads no negative prompt; no weight reaches its pooled CLIP output
        assert ours.uncond is None and ours.pooled is not None and unit.pooled is not None
        assert torch.equal(ours.pooled, pooled) and torch.equal(unit.pooled, pooled)


@pytest.mark.parametrize("source", ["builtin:tiny-flux-dev", "builtin:tiny-chroma"])
@pytest.mark.parametrize("scheduling", ["step", "batch"])
async def test_weights_change_the_image_and_batch_like_plain_prompts(
    source: str, scheduling: str, make_engine: EngineFactory
) -> None:
    engine = await make_engine(
        model=source, scheduling=scheduling, max_batch_size=4, batch_wait_ms=100
    )
    await assert_weights_apply_alone_and_batched(engine, guidance=3.5)


def test_diffusion_transformers_run_in_bfloat16_on_a_gpu(config_of: Any) -> None:
    """With `dtype = "auto"`, a GPU runs SD's UNets in float16 and the diffusion transformers
    in bfloat16, as they were trained (FLUX.1 in float16 overflows to NaN): the family is read
    from the model's `model_index.json` before its weights load. (No GPU here: the choice
    is checked, the CPU keeps float32.)"""
    from engine.devices import pick_dtype
    from engine.loader import preferred_half
    from engine.tiny import builtin_folder

    for source, half in (("builtin:tiny", "float16"), ("builtin:tiny-flux", "bfloat16")):
        config = config_of(source)
        builtin_folder(source, config.cache_dir)
        assert preferred_half(config.model_specs[0], config) == half
        assert pick_dtype("auto", torch.device("cuda"), half) == getattr(torch, half)
        assert pick_dtype("auto", torch.device("cpu"), half) == torch.float32
    assert pick_dtype("float16", torch.device("cuda"), "bfloat16") == torch.float16
