"""SD3/SD3.5 and Z-Image batched across users step by step like SD: each image equals the
stock diffusers pipeline run alone.

The tiny random-weight pipelines of `engine/tiny_dit.py` (T5 and Qwen tokenizers built
locally), loaded through the real `from_pretrained`, compared with a second copy of the model
called the usual way, with the same seed and settings. Both pipelines put the negative and the
positive rows of true classifier-free guidance into ONE transformer call, so each step is one
call whatever the guidance; Z-Image's transformer takes per-sample lists of latents and of
captions as long as each prompt, so requests with prompts of different lengths share a forward.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from engine import EngineConfig, ImageRequest, weighting
from engine.families import family_named
from engine.job import Slot
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

FAMILIES = {"builtin:tiny-sd3": "sd3", "builtin:tiny-zimage": "zimage"}


def resolved(prompt: str, **fields: Any) -> ImageRequest:
    base: dict[str, Any] = {"seed": 1, "steps": 3, "guidance": 3.5, "width": 64, "height": 64}
    return ImageRequest(prompt, **{**base, **fields})


def picture(seed: int, width: int = 64, height: int = 64) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def stock(model: LoadedModel, r: ImageRequest, output_type: str) -> Any:
    """The stock pipeline for one request alone, as a diffusers user would call it: one
    prompt (and picture) per image, one generator per image, the prompt without A1111 syntax."""
    kwargs: dict[str, Any] = {
        "prompt": [weighting.plain_text(r.prompt)] * r.count,
        "negative_prompt": [r.negative_prompt] * r.count,
        "num_inference_steps": r.steps,
        "guidance_scale": r.guidance,
        "height": r.height,
        "width": r.width,
        "generator": [torch.Generator("cpu").manual_seed(seed) for seed in r.seeds],
        "output_type": output_type,
    }
    if r.init_image is None:
        return model.pipe(**kwargs).images
    pictures = [r.init_image] * r.count
    return image_to_image(model)(image=pictures, strength=r.strength, **kwargs).images


def forwards(model: LoadedModel) -> list[tuple[int, set[int]]]:
    """Each forward the model's transformer runs from now on: its rows and (Z-Image) the
    lengths of its captions."""
    seen: list[tuple[int, set[int]]] = []

    def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if "hidden_states" in kwargs:  # SD3: every argument by name
            seen.append((int(kwargs["hidden_states"].shape[0]), set()))
        else:  # Z-Image: per-sample lists, by position
            seen.append((len(args[0]), {len(c) for c in args[2]}))

    model.pipe.transformer.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


@pytest.fixture
def config_of(model_cache: Any) -> Any:
    def make(source: str, **overrides: Any) -> EngineConfig:
        return EngineConfig(model=source, cache_dir=model_cache, batch_wait_ms=20, **overrides)

    return make


@pytest.mark.parametrize("source", list(FAMILIES))
def test_staggered_requests_of_any_steps_guidance_and_prompt_length_equal_the_stock_pipeline(
    source: str, config_of: Any, stock_models: StockModels
) -> None:
    config = config_of(source)
    model = stock_models(config)
    assert model.profile.family == FAMILIES[source]
    ours = load_model(config)
    seen = forwards(ours)
    samples: list[Sample] = run_staggered(
        Stepper(ours),
        resolved("a robot painting", seed=5, steps=5, count=2),
        [
            resolved(
                "(a castle:1.3) in the [sky], at night, with a red moon", seed=9, guidance=5.0
            ),
            resolved("a red dragon", negative_prompt="blurry", seed=13, steps=4, guidance=0.0),
        ],
    )
    finals = []
    for sample in samples:
        expected = stock(model, sample.request, "latent")
        assert sample.latents is not None
        assert (sample.latents - expected).abs().max().item() < 1e-4, sample.request
        finals.append(sample.latents)
    # Not vacuous: another seed, or another prompt with the same seed, gives other latents.
    assert (finals[0][0] - finals[0][1]).abs().max().item() > 0.05
    other = stock(model, dataclasses.replace(samples[1].request, prompt="a ship"), "latent")
    assert (finals[1] - other).abs().max().item() > 0.05
    # One transformer call a step with or without guidance (its rows in the same call).
    assert [s.calls for s in samples] == [5, 3, 4]
    # One forward a tick: the first alone (2 images x 2 for guidance), then all three (the
    # unguided one a row per image), then the longest alone.
    assert [rows for rows, _ in seen] == [4, 4, 7, 7, 7, 1]
    if FAMILIES[source] == "zimage":  # captions of different lengths shared those forwards
        assert all(len(lengths) >= 3 for rows, lengths in seen if rows == 7)


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
    # SD3 weights its T5 rows (their own test below): weight 1.0 is the stock prompt there;
    # Z-Image takes weights out of the text.
    second = "two (owls:1.0)" if FAMILIES[source] == "sd3" else "two (owls:1.2)"
    await assert_stock_images_in_both_modes(engine, stock_models(config), stock, second)


def test_weighted_sd3_rows_are_the_stock_rows_times_their_weights(
    config_of: Any, stock_models: StockModels
) -> None:
    """sd_embed's SD3 weighting (`engine/weighting_t5.py`), against the stock `encode_prompt`
    of the plain prompts: each weighted token's row of both CLIP sequences (side by side in
    the first 77 rows) and of T5's (the rows after) times its weight, every other row and the
    pooled outputs exactly the stock ones; without weights, exactly the stock embeddings."""
    pipe = stock_models(config_of("builtin:tiny-sd3")).pipe
    family = family_named("sd3")
    plain, negative = "a red fox in snow", "blurry"
    args: dict[str, Any] = {"device": "cpu", "count": 2, "cfg": True}
    with torch.inference_mode():
        ours = family.embeddings(pipe, "a (red:1.4) fox in [snow]", "(blurry:0.6)", **args)
        unit = family.embeddings(pipe, "a (red:1.0) fox in snow", negative, **args)
        cond, uncond, pooled, negative_pooled = pipe.encode_prompt(
            plain, None, None, device="cpu", num_images_per_prompt=2, negative_prompt=negative
        )

    def rows(text: str, word: str, weight: float) -> dict[int, float]:
        clip, t5 = pipe.tokenizer, pipe.tokenizer_3  # both CLIPs share one vocabulary
        at = rows_of(clip(text).input_ids, clip(word, add_special_tokens=False).input_ids)
        later = rows_of(t5(text).input_ids, t5(word, add_special_tokens=False).input_ids)
        window = pipe.tokenizer_max_length
        return dict.fromkeys(at, weight) | dict.fromkeys([window + r for r in later], weight)

    assert torch.equal(unit.cond, cond) and torch.equal(unit.uncond, uncond)
    assert not torch.equal(ours.cond, cond)
    expected = scaled(cond, rows(plain, "red", 1.4) | rows(plain, "snow", 1 / 1.1))
    torch.testing.assert_close(ours.cond, expected)
    torch.testing.assert_close(ours.uncond, scaled(uncond, rows(negative, negative, 0.6)))
    for embeddings in (ours, unit):  # no weight reaches a pooled output
        assert torch.equal(embeddings.pooled, pooled)
        assert torch.equal(embeddings.negative_pooled, negative_pooled)


@pytest.mark.parametrize("scheduling", ["step", "batch"])
async def test_weights_change_the_image_and_batch_like_plain_prompts(
    scheduling: str, make_engine: EngineFactory
) -> None:
    engine = await make_engine(
        model="builtin:tiny-sd3", scheduling=scheduling, max_batch_size=4, batch_wait_ms=100
    )
    await assert_weights_apply_alone_and_batched(engine, guidance=4.0)


async def test_weights_an_llm_encoder_does_not_read_are_taken_out_with_a_note(
    make_engine: EngineFactory,
) -> None:
    """Z-Image reads its prompt through a language model, without A1111 weights (as
    Qwen-Image and FLUX.2 klein): the syntax is taken out of the text (never sent as literal
    brackets), the requester is told, and the image is the plain prompt's."""
    engine = await make_engine(model="builtin:tiny-zimage", scheduling="step")
    checked = engine.prepare(
        ImageRequest("a (red:1.3) fox BREAK [snow]", seed=4, steps=2, guidance=0.0)
    )
    assert checked.request.prompt == "a red fox snow"
    assert any("reads no prompt weights" in w for w in checked.warnings)
    plain = engine.prepare(ImageRequest("a red fox snow", seed=4, steps=2, guidance=0.0))
    assert not plain.warnings
    weighted, alone = [await engine.submit(c).result() for c in (checked, plain)]
    assert weighted.images[0].png == alone.images[0].png


@pytest.mark.parametrize("source", list(FAMILIES))
def test_image_to_image_beside_text_requests_equals_stock(
    source: str, config_of: Any, stock_models: StockModels
) -> None:
    config = config_of(source)
    model = stock_models(config)
    size = {"width": 96, "height": 64}  # not the native size: the pipelines' own default
    samples = run_staggered(
        Stepper(load_model(config)),
        resolved("a harbour", seed=2, steps=4, **size),
        [
            resolved(
                "a boat", init_image=picture(1, 96), strength=0.6, seed=7, steps=5, count=2, **size
            ),
            resolved("a gull", init_image=picture(2, 96), strength=0.9, seed=4, steps=3, **size),
        ],
    )
    for sample in samples:
        expected = stock(model, sample.request, "latent")
        assert sample.latents is not None
        assert (sample.latents - expected).abs().max().item() < 1e-4, sample.request
    # Only the steps after `strength` (3 x 0.9 rounds up), one call each with guidance.
    assert [s.calls for s in samples[1:]] == [3, 3]
    # The picture matters: another one gives other latents.
    other = dataclasses.replace(samples[1].request, init_image=picture(3, 96))
    assert (samples[1].latents - stock(model, other, "latent")).abs().max().item() > 0.05


@pytest.mark.parametrize("source", list(FAMILIES))
def test_progress_shows_a_preview_of_each_step(source: str, config_of: Any) -> None:
    stepper = Stepper(load_model(config_of(source)))
    steps: list[tuple[int, int]] = []
    previews: list[bytes] = []
    slot = Slot(
        resolved("a cat", steps=3),
        lambda i, n: steps.append((i, n)),
        previews.append,
        lambda: True,  # wants a preview
        lambda: False,
    )
    sample = stepper.admit(slot)
    while not sample.done:
        assert stepper.tick([sample]) == [None]
    assert steps == [(1, 3), (2, 3), (3, 3)]
    assert len(previews) == 3 and all(p.startswith(b"\x89PNG") for p in previews)
    assert len(stepper.finish(sample)) == 1


def test_profiles_and_the_model_cards_defaults(config_of: Any, stock_models: StockModels) -> None:
    sd3 = stock_models(config_of("builtin:tiny-sd3"))
    zimage = stock_models(config_of("builtin:tiny-zimage"))
    for model in (sd3, zimage):
        profile = model.profile
        assert profile.negative_prompt and profile.img2img
        assert (profile.multiple, profile.native_size, profile.default_steps) == (16, 64, 4)
    # By the transformer's shape (the tiny one is SD3.5 medium's) and, for turbo, the name.
    family = family_named("sd3")
    medium = family.defaults(sd3.pipe, "stabilityai/stable-diffusion-3.5-medium")
    assert (medium.steps, medium.guidance) == (40, 4.5)
    turbo = family.defaults(sd3.pipe, "stabilityai/stable-diffusion-3.5-large-turbo")
    assert (turbo.steps, turbo.guidance) == (4, 0.0)
    turbo = family_named("zimage").defaults(zimage.pipe, "Tongyi-MAI/Z-Image-Turbo")
    assert (turbo.steps, turbo.guidance, turbo.native_size) == (8, 0.0, 1024)
