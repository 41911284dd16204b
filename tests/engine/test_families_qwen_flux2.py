"""Qwen-Image and FLUX.2 [klein], batched across users step by step like SD: each image
equals the stock diffusers pipeline run alone.

The tiny random-weight pipelines of `engine/tiny_dit2.py` (Qwen tokenizers built locally),
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

from engine import EngineConfig, ImageRequest, InvalidRequest, Limits
from engine.families import FamilyDefaults, family_of
from engine.loader import LoadedModel, image_to_image, load_model
from engine.request import validate
from engine.stepper import Sample, Stepper
from engine.torch_ops import preview_png

from .conftest import (
    EngineFactory,
    StockModels,
    assert_stock_images_in_both_modes,
    run_staggered,
)

QWEN, KLEIN = "builtin:tiny-qwenimage", "builtin:tiny-flux2-klein"
FAMILIES = {QWEN: "qwenimage", KLEIN: "flux2"}


def resolved(prompt: str, **fields: Any) -> ImageRequest:
    base: dict[str, Any] = {"seed": 1, "steps": 3, "guidance": 3.5, "width": 64, "height": 64}
    return ImageRequest(prompt, **{**base, **fields})


def picture(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))


def stock(model: LoadedModel, r: ImageRequest, output_type: str) -> Any:
    """The stock pipeline for one request alone, as its model card calls it: one prompt (and
    picture) per image, one generator per image; Qwen-Image's guidance is `true_cfg_scale`
    with the negative prompt, one space when there is none. "latent": its final latents."""
    kwargs: dict[str, Any] = {
        "prompt": [r.prompt] * r.count,
        "num_inference_steps": r.steps,
        "height": r.height,
        "width": r.width,
        "generator": [torch.Generator("cpu").manual_seed(seed) for seed in r.seeds],
        "output_type": output_type,
    }
    if model.profile.family == "qwenimage":
        kwargs["true_cfg_scale"] = r.guidance
        kwargs["negative_prompt"] = [r.negative_prompt or " "] * r.count
    else:
        kwargs["guidance_scale"] = r.guidance
    final: list[torch.Tensor] = []
    if output_type == "latent":  # the latents after the last step, as the stepper sees them
        kwargs["callback_on_step_end"] = lambda p, i, t, d: final.append(d["latents"]) or d
        kwargs["output_type"] = "np"  # klein's "latent" output is unpatched and unnormalised
    if r.init_image is None:
        images = model.pipe(**kwargs).images
    else:
        pictures = [r.init_image] * r.count
        images = image_to_image(model)(image=pictures, strength=r.strength, **kwargs).images
    return final[-1] if final else images


def text_tokens(model: LoadedModel, prompt: str) -> int:
    """The length of a prompt's embeddings as the stock pipeline makes them."""
    embeds, _ = model.pipe.encode_prompt([prompt], device=model.device)
    return int(embeds.shape[1])


@pytest.fixture
def config_of(model_cache: Any) -> Any:
    def make(source: str, **overrides: Any) -> EngineConfig:
        return EngineConfig(model=source, cache_dir=model_cache, batch_wait_ms=20, **overrides)

    return make


class Forwards:
    """The transformer's forwards, counted with the text length each was given."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.texts: list[tuple[int, int]] = []  # (rows, text tokens) of each forward
        self.handle = module.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        text = kwargs["encoder_hidden_states"]
        self.texts.append((int(text.shape[0]), int(text.shape[1])))


@pytest.mark.parametrize("source", list(FAMILIES))
def test_staggered_requests_of_any_steps_guidance_and_prompt_length_equal_the_stock_pipeline(
    source: str, config_of: Any, stock_models: StockModels
) -> None:
    config = config_of(source)
    model = stock_models(config)
    assert model.profile.family == FAMILIES[source]
    loaded = load_model(config)
    stepper = Stepper(loaded)
    forwards = Forwards(loaded.pipe.transformer)
    first = resolved("a robot painting", seed=5, steps=5, count=2)
    later = [
        resolved("a castle in the sky above a quiet lake at night", seed=9, steps=3, guidance=5.0),
        resolved("a big red dragon", negative_prompt="blurry ugly", seed=13, steps=4, guidance=1.0),
    ]
    samples: list[Sample] = run_staggered(stepper, first, later)
    forwards.handle.remove()
    finals = []
    for sample in samples:
        expected = stock(model, sample.request, "latent")
        assert sample.latents is not None
        assert (sample.latents - expected).abs().max().item() < 1e-4, sample.request
        finals.append(sample.latents)
    # Not vacuous: another seed or prompt gives other latents.
    assert (finals[0][0] - finals[0][1]).abs().max().item() > 0.05
    # Guidance over 1 calls the transformer twice a step (true CFG), in one tick.
    assert [s.calls for s in samples] == [10, 6, 4]
    # Every tick ran ONE forward per call of a step over every request: after the two
    # ticks alone (2 rows, twice each), the three requests' 2 + 1 + 1 rows, then their
    # negative prompts' 2 + 1 rows; and so on as they end.
    rows = [r for r, _ in forwards.texts]
    assert rows[:6] == [2, 2, 2, 2, 4, 3]
    if source == QWEN:
        # Prompts of different lengths shared those forwards: padded to the longest.
        lengths = {text_tokens(model, r.prompt) for r in (first, *later)}
        assert len(lengths) == 3
        assert forwards.texts[4] == (4, max(lengths))
    else:  # klein pads every prompt to 512 tokens itself
        assert {t for _, t in forwards.texts} == {512}


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
    await assert_stock_images_in_both_modes(
        engine, stock_models(config), stock, "two small owls on a tree"
    )


def test_qwenimage_image_to_image_beside_text_requests_equals_stock(
    config_of: Any, stock_models: StockModels
) -> None:
    config = config_of(QWEN)
    model = stock_models(config)
    assert model.profile.img2img
    stepper = Stepper(load_model(config))
    samples = run_staggered(
        stepper,
        resolved("a harbour", seed=2, steps=4),
        [
            resolved("a boat", init_image=picture(1), strength=0.6, seed=7, steps=5, count=2),
            resolved("a gull", init_image=picture(2), strength=0.9, seed=4, steps=3, guidance=1),
        ],
    )
    for sample in samples:
        expected = stock(model, sample.request, "latent")
        assert sample.latents is not None
        assert (sample.latents - expected).abs().max().item() < 1e-4, sample.request
    # Only the steps after `strength` (rounded up, as FLUX: 5 x 0.6 = 3, 3 x 0.9 -> 3), twice
    # with guidance over 1.
    assert [s.calls for s in samples[1:]] == [6, 3]


def test_klein_has_no_image_to_image_and_refuses_an_image_clearly(
    config_of: Any, stock_models: StockModels
) -> None:
    model = stock_models(config_of(KLEIN))
    profile = model.profile
    assert not profile.img2img and not profile.negative_prompt
    with pytest.raises(InvalidRequest) as refused:
        validate(ImageRequest("a boat", init_image=picture(1)), Limits(), profile, len)
    assert refused.value.field == "image"
    assert "cannot start from a picture" in str(refused.value)
    with pytest.raises(ValueError, match="no image-to-image pipeline"):
        image_to_image(model)


def test_defaults_follow_the_model_cards(config_of: Any, stock_models: StockModels) -> None:
    qwen = stock_models(config_of(QWEN))
    klein = stock_models(config_of(KLEIN))
    assert qwen.profile.negative_prompt and qwen.profile.img2img
    assert qwen.profile.multiple == klein.profile.multiple == 16
    assert dataclasses.replace(qwen.profile).default_steps == 4  # the builtin's
    # A real folder: the model cards' steps and guidance, the pipeline's native size.
    qwen_family, klein_family = family_of(qwen.pipe), family_of(klein.pipe)
    assert qwen_family.defaults(qwen.pipe, "Qwen/Qwen-Image") == FamilyDefaults(50, 4.0, 1024, 16)
    base = FamilyDefaults(50, 4.0, 1024, 16)
    assert klein_family.defaults(klein.pipe, "/models/klein-base") == base
    distilled = type(klein.pipe)(**klein.pipe.components, is_distilled=True)
    assert klein_family.defaults(distilled, "/models/klein") == FamilyDefaults(4, 1.0, 1024, 16)
    # The step-distilled klein ignores guidance: one transformer call a step, as stock.
    model = dataclasses.replace(klein, pipe=distilled)
    [sample] = run_staggered(Stepper(model), resolved("a fox", steps=3, guidance=4.0), [])
    assert sample.calls == 3
    assert sample.latents is not None
    assert (sample.latents - stock(model, sample.request, "latent")).abs().max().item() < 1e-4


@pytest.mark.parametrize("source", list(FAMILIES))
def test_previews_unpack_the_latents_as_the_pipeline_does(
    source: str, config_of: Any, stock_models: StockModels
) -> None:
    model = stock_models(config_of(source))
    pipe, family = model.pipe, family_of(model.pipe)
    request = resolved("a fox", width=64, height=128)  # not square: h and w cannot swap
    latents = torch.randn(2, (128 // 16) * (64 // 16), 16)  # packed 2x2 tokens of 4 channels
    ours = family.preview_latents(pipe, latents, request)
    if source == QWEN:
        theirs = pipe._unpack_latents(latents, 128, 64, pipe.vae_scale_factor)[0, :, 0]
    else:
        ids = pipe._prepare_latent_ids(torch.zeros(1, 16, 8, 4))
        packed = pipe._unpack_latents_with_ids(latents[:1], ids, 8, 4)
        theirs = pipe._unpatchify_latents(packed)[0]
    assert ours.shape == (4, 16, 8)
    assert torch.equal(ours, theirs)
    assert preview_png(ours, family.name) is not None
