"""Step caching per request (`[models.<name>] cache`, issue 28): DeepCache on the UNets and
First-Block-Cache on the transformers, with a cache and a phase per request.

The references are the published implementations on the stock pipelines, one request alone:
the `DeepCache` package's `DeepCacheSDHelper` on SD and SDXL, diffusers' own
`apply_first_block_cache` hook on FLUX.1 and Qwen-Image. A request alone equals its reference;
requests of different steps, guidance, kinds and arrival times sharing ticks equal theirs; a
request that does not ask for the cache beside cached ones equals the stock pipeline without
it; and the cache changes the images (it skipped work).
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from engine import EngineConfig, ImageRequest, InvalidRequest, ModelSpec
from engine.loader import LoadedModel, image_to_image, load_model
from engine.stepper import Sample, Stepper

from .conftest import EngineFactory, StockModels, pixels, quiet_slot, run_staggered

#: The tiny random models' first-block residuals change by 0.2 to 0.45 (relative) from step
#: to step, so this threshold makes some steps compute and some reuse.
THRESHOLD = 0.3


def resolved(prompt: str, **fields: Any) -> ImageRequest:
    base: dict[str, Any] = {"seed": 1, "steps": 7, "guidance": 6.0, "width": 64, "height": 64}
    return ImageRequest(prompt, **{"fast": True, "model": "m", **base, **fields})


def picture(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))


def cached_config(source: str, cache_dir: Path, **cache: Any) -> EngineConfig:
    spec = ModelSpec("m", source, **cache)
    return EngineConfig(model=source, cache_dir=cache_dir, models=(spec,), batch_wait_ms=20)


@contextmanager
def deepcache_helper(model: LoadedModel, interval: int, branch: int) -> Iterator[None]:
    from DeepCache import DeepCacheSDHelper

    helper = DeepCacheSDHelper(pipe=model.pipe)
    helper.set_params(cache_interval=interval, cache_branch_id=branch)
    helper.enable()
    try:
        yield
    finally:
        helper.disable()


@contextmanager
def first_block_cache(model: LoadedModel, threshold: float) -> Iterator[None]:
    from diffusers.hooks import FirstBlockCacheConfig, HookRegistry, apply_first_block_cache

    transformer = model.pipe.transformer
    apply_first_block_cache(transformer, FirstBlockCacheConfig(threshold=threshold))
    try:
        yield
    finally:
        for block in transformer.modules():
            registry = getattr(block, "_diffusers_hook", None)
            if isinstance(registry, HookRegistry):
                for name in ("fbc_leader_block_hook", "fbc_block_hook"):
                    if registry.get_hook(name) is not None:
                        registry.remove_hook(name, recurse=False)


def stock(model: LoadedModel, r: ImageRequest, output_type: str = "latent") -> Any:
    """The stock pipeline for one request alone (with whatever cache hooks are on)."""
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
    if r.negative_prompt and model.profile.family in ("sd", "sdxl"):
        kwargs["negative_prompt"] = [r.negative_prompt] * r.count
    if r.init_image is None:
        return model.pipe(**kwargs).images
    pictures = [r.init_image] * r.count
    return image_to_image(model)(image=pictures, strength=r.strength, **kwargs).images


def reference(
    model: LoadedModel, r: ImageRequest, output_type: str = "latent", **cache: Any
) -> Any:
    """The request alone on the stock pipeline, with the published cache when it is fast."""
    if not r.fast:
        return stock(model, r, output_type)
    if "cache_threshold" in cache:
        # One state for pipelines that name no context (FLUX.1's image-to-image one).
        transformer = model.pipe.transformer
        with first_block_cache(model, cache["cache_threshold"]), transformer.cache_context(""):
            return stock(model, r, output_type)
    with deepcache_helper(model, cache["cache_interval"], cache["cache_branch"]):
        return stock(model, r, output_type)


def run_alone(stepper: Stepper, request: ImageRequest) -> Sample:
    sample = stepper.admit(quiet_slot(request))
    while not sample.done:
        assert stepper.tick([sample]) == [None]
    return sample


def flux_of_four_blocks(folder: Path, model_cache: Path) -> Path:
    """tiny-flux-dev with two double and two single blocks (two in the middle to skip)."""
    from diffusers import FluxTransformer2DModel

    pipe = load_model(EngineConfig(model="builtin:tiny-flux-dev", cache_dir=model_cache)).pipe
    config = {**pipe.transformer.config, "num_layers": 2, "num_single_layers": 2}
    torch.manual_seed(7)
    pipe.transformer = FluxTransformer2DModel.from_config(config)
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def flux4(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Path:
    return flux_of_four_blocks(tmp_path_factory.mktemp("flux4"), model_cache)


def source_of(name: str, sdxl_folder: Path, flux4: Path) -> str:
    return {"sdxl": str(sdxl_folder), "flux4": str(flux4)}.get(name, name)


DEEPCACHE = [
    ("builtin:tiny", {"cache_interval": 3, "cache_branch": 0}),
    ("builtin:tiny", {"cache_interval": 2, "cache_branch": 4}),
    ("sdxl", {"cache_interval": 3, "cache_branch": 1}),
]
FBCACHE = [
    ("builtin:tiny-flux-dev", 3.5),
    ("builtin:tiny-flux", 0.0),
    ("flux4", 3.5),
    ("builtin:tiny-qwenimage", 4.0),  # true CFG: a "cond" and an "uncond" state per request
]


@pytest.mark.parametrize(("name", "settings"), DEEPCACHE)
def test_deepcache_alone_equals_the_deepcache_package(
    name: str,
    settings: dict[str, int],
    model_cache: Path,
    sdxl_folder: Path,
    flux4: Path,
    stock_models: StockModels,
) -> None:
    source = source_of(name, sdxl_folder, flux4)
    config = cached_config(source, model_cache, cache="deepcache", **settings)
    stepper = Stepper(load_model(config))
    request = resolved("a robot painting", seed=5, count=2)
    sample = run_alone(stepper, request)
    model = stock_models(EngineConfig(model=source, cache_dir=model_cache))
    expected = reference(model, request, **settings)
    assert sample.latents is not None and sample.cache is not None
    assert (sample.latents - expected).abs().max().item() < 1e-5
    # Not vacuous: it reused features at some steps, and that changed the image.
    assert sample.cache.reused > 0 and sample.cache.computed > 1
    plain = stock(model, request)
    assert (sample.latents - plain).abs().max().item() > 0.05


@pytest.mark.parametrize(("name", "guidance"), FBCACHE)
def test_fbcache_alone_equals_diffusers_first_block_cache(
    name: str,
    guidance: float,
    model_cache: Path,
    sdxl_folder: Path,
    flux4: Path,
    stock_models: StockModels,
) -> None:
    source = source_of(name, sdxl_folder, flux4)
    config = cached_config(source, model_cache, cache="fbcache", cache_threshold=THRESHOLD)
    stepper = Stepper(load_model(config))
    request = resolved("a robot painting", seed=3, steps=8, guidance=guidance, count=2)
    sample = run_alone(stepper, request)
    model = stock_models(EngineConfig(model=source, cache_dir=model_cache))
    expected = reference(model, request, cache_threshold=THRESHOLD)
    assert sample.latents is not None and sample.cache is not None
    assert (sample.latents - expected).abs().max().item() < 1e-5
    assert sample.cache.reused > 0 and sample.cache.computed > 1
    plain = stock(model, request)
    assert (sample.latents - plain).abs().max().item() > 1e-3


@pytest.mark.parametrize(
    ("source", "cache"),
    [
        ("builtin:tiny", {"cache": "deepcache", "cache_interval": 3, "cache_branch": 0}),
        ("builtin:tiny-flux-dev", {"cache": "fbcache", "cache_threshold": THRESHOLD}),
    ],
)
def test_requests_sharing_ticks_equal_each_alone(
    source: str, cache: dict[str, Any], model_cache: Path, stock_models: StockModels
) -> None:
    """A fast request starts alone; then fast ones of other steps, guidance and kinds, and one
    that is not fast, join it at its third step: every one equals its own reference alone,
    and the normal one the stock pipeline without any cache."""
    model = load_model(cached_config(source, model_cache, **cache))
    stepper = Stepper(model)
    flux = "flux" in source
    samples = run_staggered(
        stepper,
        resolved("a robot painting", seed=5, count=2, guidance=3.5 if flux else 6.0),
        [
            resolved("a castle in the sky", seed=9, steps=5, guidance=5.0),
            resolved("a red dragon", seed=13, steps=2, guidance=2.0, fast=False),
            resolved("a boat", init_image=picture(1), strength=0.7, seed=7, steps=9),
        ],
    )
    stock_model = stock_models(EngineConfig(model=source, cache_dir=model_cache))
    settings = {k: v for k, v in cache.items() if k != "cache"}
    for sample in samples:
        expected = reference(stock_model, sample.request, **settings)
        assert sample.latents is not None
        assert (sample.latents - expected).abs().max().item() < 1e-4, sample.request.prompt
    assert samples[2].cache is None  # the normal request kept no cache state
    forwards = model.cache.forwards
    assert forwards["full"] > 0 and forwards["reuse"] > 0
    if flux:  # requests disagreed at some ticks: those ran a forward for each side
        assert forwards["split"] > 0


@pytest.mark.parametrize("scheduling", ["step", "batch"])
async def test_the_engine_caches_fast_requests_beside_normal_ones_in_both_modes(
    scheduling: str, make_engine: EngineFactory, model_cache: Path, stock_models: StockModels
) -> None:
    settings = {"cache_interval": 2, "cache_branch": 1}
    spec = ModelSpec("m", "builtin:tiny", cache="deepcache", **settings)
    engine = await make_engine(
        models=(spec,), scheduling=scheduling, max_batch_size=4, batch_wait_ms=200
    )
    asked = [
        ImageRequest("a lighthouse at night", seed=3, steps=4, guidance=6.0, fast=True, user="a"),
        ImageRequest("two owls", seed=8, steps=4, guidance=6.0, count=2, user="b"),
        ImageRequest("a ship", seed=11, steps=4, guidance=6.0, fast=True, user="c"),
    ]
    jobs = [engine.submit(engine.prepare(r)) for r in asked]
    results = await asyncio.gather(*(job.result() for job in jobs))
    model = stock_models(EngineConfig(model="builtin:tiny", cache_dir=model_cache))
    for job, result in zip(jobs, results, strict=True):
        expected = reference(model, job.request, "pil", **settings)
        assert len(result.images) == len(expected) == job.request.count
        for image, theirs in zip(result.images, expected, strict=True):
            ours = pixels(image.png)
            assert np.abs(ours - np.asarray(theirs, dtype=np.int16)).max() <= 1
    # The three shared calls: one batch, or the ticks of the step loop.
    assert max(call.requests for call in engine.stats.recent_calls) == 3
    fast = reference(model, jobs[0].request, "pil", **settings)[0]
    plain = stock(model, jobs[0].request, "pil")[0]
    assert np.abs(np.asarray(fast, np.int16) - np.asarray(plain, np.int16)).max() > 2


async def test_fast_is_for_models_with_a_cache_and_cache_for_all_caches_every_request(
    make_engine: EngineFactory,
) -> None:
    engine = await make_engine(
        models=(
            ModelSpec("plain", "builtin:tiny"),
            ModelSpec("fast", "builtin:tiny", cache="deepcache"),
            ModelSpec("always", "builtin:tiny", cache="deepcache", cache_for="all"),
        )
    )
    with pytest.raises(InvalidRequest, match="has no fast mode") as refused:
        engine.prepare(ImageRequest("a cat", model="plain", fast=True))
    assert refused.value.field == "fast"
    assert not engine.prepare(ImageRequest("a cat", model="fast")).request.fast
    assert engine.prepare(ImageRequest("a cat", model="fast", fast=True)).request.fast
    assert engine.prepare(ImageRequest("a cat", model="always")).request.fast


@pytest.mark.parametrize(
    ("source", "cache", "said"),
    [
        ("builtin:tiny-flux", {"cache": "deepcache"}, 'cache = "deepcache" is for UNet models'),
        ("builtin:tiny", {"cache": "fbcache"}, 'cache = "fbcache" is for diffusion transformers'),
        ("builtin:tiny-chroma", {"cache": "fbcache"}, "does not serve Chroma models"),
        ("builtin:tiny", {"cache": "deepcache", "cache_branch": 6}, "cache_branch 6 is past"),
    ],
)
def test_a_cache_the_denoiser_cannot_take_is_refused_at_load_in_one_line(
    source: str, cache: dict[str, Any], said: str, model_cache: Path
) -> None:
    with pytest.raises(ValueError, match=said) as refused:
        load_model(cached_config(source, model_cache, **cache))
    assert "\n" not in str(refused.value)


def test_cache_settings_are_checked_with_the_config() -> None:
    problems = ModelSpec("m", "builtin:tiny", cache="deepcach", cache_interval=0).problems()
    assert any("did you mean 'deepcache'" in p for p in problems)
    assert any("cache_interval must be between 1 and 100" in p for p in problems)
    nan = ModelSpec("m", "builtin:tiny", cache_threshold=float("nan"), cache_for="some")
    assert len(nan.problems()) == 2
    assert dataclasses.replace(nan, cache_threshold=0.1, cache_for="all").problems() == []


def test_the_start_up_line_names_the_sdpa_kernel_and_the_step_cache(model_cache: Path) -> None:
    from engine.acceleration import accelerate

    config = cached_config("builtin:tiny", model_cache, cache="deepcache", cache_for="all")
    line = accelerate(load_model(config), config)
    # torch's own choice for the UNet's heads and dtype on this device (on a CPU: its flash
    # kernel, or math).
    assert re.search(r"attention sdpa \((flash|efficient|cudnn|math) kernel\)", line), line
    assert line.endswith("step cache deepcache (interval 3, branch 0) for every request"), line
    plain = EngineConfig(model="builtin:tiny", cache_dir=model_cache)
    assert accelerate(load_model(plain), plain).endswith("step cache off")
