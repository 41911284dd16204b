"""Per-model recipes of SD and SDXL derivatives (`[models.<name>]` keys): clip skip, a
v-prediction model with its zero-terminal-SNR schedule, Karras sigmas, guidance rescale.

Each recipe is what a diffusers user would set on the stock pipeline for such a model, and
the engine's image must equal that stock call's; other families refuse the keys.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import torch

from engine import EngineConfig, ImageRequest, ModelSpec
from engine.loader import load_model

from .conftest import EngineFactory, pixels


def spec(**recipe: Any) -> ModelSpec:
    return ModelSpec(name="tiny", source="builtin:tiny", **recipe)


def stock_pixels(config: EngineConfig, request: ImageRequest, **call: Any) -> np.ndarray:
    """The stock pipeline (the engine's loader, so the same scheduler) called as a user
    would with the recipe's arguments."""
    model = load_model(config)
    text = {} if "prompt_embeds" in call else {"prompt": request.prompt}
    image = model.pipe(
        **text,
        num_inference_steps=request.steps,
        guidance_scale=request.guidance,
        width=64,
        height=64,
        generator=[torch.Generator("cpu").manual_seed(request.seed or 0)],
        **call,
    ).images[0]
    return np.asarray(image, dtype=np.int16)


def skipped_embeddings(config: EngineConfig, text: str, clip_skip: int) -> torch.Tensor:
    """Diffusers' definition of `clip_skip` for SD 1.x/2.x (`encode_prompt`): the hidden state
    `clip_skip` layers before the last, through the final layer norm. (The stock pipeline's own
    `clip_skip` looks for `text_encoder.text_model`, which transformers 5 dropped.)"""
    pipe = load_model(config).pipe
    ids = pipe.tokenizer(
        text, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        out = pipe.text_encoder(ids, output_hidden_states=True)
        return pipe.text_encoder.final_layer_norm(out.hidden_states[-(clip_skip + 1)])


@pytest.mark.parametrize("scheduling", ["step", "batch"])
async def test_clip_skip_and_guidance_rescale_reach_the_stock_call(
    scheduling: str, make_engine: EngineFactory, tiny_config: EngineConfig
) -> None:
    recipe = spec(clip_skip=2, guidance_rescale=0.7)
    engine = await make_engine(models=(recipe,), scheduling=scheduling)
    request = ImageRequest("a lighthouse", seed=3, steps=3, guidance=6.0, user="a")
    weighted = dataclasses.replace(request, prompt="a (lighthouse:1.0)")  # the weighted path
    ours = [pixels((await engine.generate(r)).images[0].png) for r in (request, weighted)]
    config = dataclasses.replace(tiny_config, models=(recipe,))
    expected = stock_pixels(
        config,
        request,
        prompt_embeds=skipped_embeddings(config, request.prompt, 2),
        negative_prompt_embeds=skipped_embeddings(config, "", 2),
        guidance_rescale=0.7,
    )
    assert np.abs(ours[0] - expected).max() <= 1 and np.abs(ours[1] - expected).max() <= 1
    assert np.abs(ours[0] - stock_pixels(config, request)).max() > 5  # the recipe matters


async def test_a_v_prediction_zero_snr_karras_model_gets_its_scheduler(
    make_engine: EngineFactory, tiny_config: EngineConfig
) -> None:
    recipe = spec(scheduler="euler", prediction="v_prediction", zero_snr=True, karras=True)
    config = dataclasses.replace(tiny_config, models=(recipe,))
    scheduler = load_model(config).pipe.scheduler
    assert type(scheduler).__name__ == "EulerDiscreteScheduler"
    assert scheduler.config.prediction_type == "v_prediction"
    assert scheduler.config.rescale_betas_zero_snr and scheduler.config.use_karras_sigmas
    assert scheduler.config.timestep_spacing == "trailing"
    engine = await make_engine(models=(recipe,), scheduling="step")
    request = ImageRequest("a valley", seed=5, steps=4, guidance=5.0, user="a")
    ours = pixels((await engine.generate(request)).images[0].png)
    assert np.abs(ours - stock_pixels(config, request)).max() <= 1


def test_recipes_are_checked_and_other_families_refuse_them(tiny_config: EngineConfig) -> None:
    with pytest.raises(ValueError, match="clip_skip must be between 0 and 12"):
        EngineConfig(models=(spec(clip_skip=13),))
    with pytest.raises(ValueError, match="prediction must be one of default, epsilon"):
        EngineConfig(models=(spec(prediction="x0"),))
    ddim = dataclasses.replace(tiny_config, models=(spec(karras=True),))
    with pytest.raises(ValueError, match="DDIMScheduler scheduler has no use_karras_sigmas"):
        load_model(ddim)
    ddpm = ModelSpec(name="flux", source="builtin:tiny-flux", scheduler="ddim")
    with pytest.raises(ValueError, match="its scheduler is its own"):
        load_model(dataclasses.replace(tiny_config, models=(ddpm,)))
    flux = ModelSpec(name="flux", source="builtin:tiny-flux", clip_skip=2)
    config = dataclasses.replace(tiny_config, models=(flux,))
    with pytest.raises(ValueError, match=r"FLUX\.1 model: clip_skip apply to Stable Diffusion"):
        load_model(config)
