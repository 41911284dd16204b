"""Edits by instruction (FLUX.1 Kontext, FLUX.2 klein with reference pictures, Qwen-Image-
Edit 2509): batched with the other edits of their family in both scheduling modes, each equal
to the stock edit pipeline run alone with the same seed.

The tiny random-weight pipelines of `engine/tiny_dit.py` and `engine/tiny_dit2.py`, loaded
through the real `from_pretrained`, compared with a second copy of the model called the
usual way. Qwen-Image-Edit's processor (transformers' `Qwen2VLProcessor`) cannot be made
without torchvision, which this machine cannot install (PyPI's Linux build is CUDA's): its
builtin's loading test is skipped without torchvision, and its batching is tested on the
same tiny pipeline built in memory with that processor's video part left out (the one fake
part, see `qwen_edit_model`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from engine import EngineConfig, ImageRequest, InvalidRequest, Limits, ModelProfile, ModelSpec
from engine.loader import LoadedModel, load_model, model_profile, text_to_image
from engine.pngmeta import read_parameters
from engine.request import validate
from engine.stepper import Sample, Stepper
from engine.torch_ops import picture_hash

from .conftest import EngineFactory, StockModels, pixels, run_staggered

KONTEXT, KLEIN, QWEN_EDIT = (
    "builtin:tiny-flux-kontext",
    "builtin:tiny-flux2-klein",
    "builtin:tiny-qwenimage-edit",
)
HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None


def picture(seed: int, size: tuple[int, int] = (80, 48)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def edit(profile: ModelProfile, prompt: str, *pictures: Image.Image, **fields: Any) -> Any:
    """The request as the engine's validation resolves it."""
    fields = {"seed": 1, "steps": 3, "guidance": 3.5, **fields}
    request = ImageRequest(prompt, references=pictures, **fields)
    return validate(request, Limits(), profile, len)[0]


def stock(model: LoadedModel, r: ImageRequest, output_type: str) -> Any:
    """The stock pipeline for one request alone, as its model card calls it: the edit
    pipeline with the request's pictures (Kontext: one per image, every size given as is;
    Qwen-Image-Edit: one prompt, `num_images_per_prompt`, `true_cfg_scale` with a one-space
    negative prompt). "latent": the latents after its last step."""
    family = model.profile.family
    kwargs: dict[str, Any] = {
        "prompt": [r.prompt] * r.count,
        "num_inference_steps": r.steps,
        "guidance_scale": r.guidance,
        "height": r.height,
        "width": r.width,
        "generator": [torch.Generator("cpu").manual_seed(seed) for seed in r.seeds],
        "output_type": "np" if output_type == "latent" else output_type,
    }
    pipe = model.pipe if r.references else text_to_image(model)
    if family == "flux-kontext":
        kwargs |= {"max_area": r.width * r.height, "_auto_resize": False}
        if r.references:
            kwargs["image"] = [r.references[0]] * r.count
    elif family == "flux2" and r.references:
        kwargs["image"] = list(r.references)
    elif family == "qwenimage-edit":
        del kwargs["guidance_scale"]
        kwargs |= {"true_cfg_scale": r.guidance, "negative_prompt": [" "] * r.count}
        if r.references:
            kwargs |= {"prompt": r.prompt, "negative_prompt": " "}
            kwargs |= {"num_images_per_prompt": r.count, "image": list(r.references)}
    final: list[torch.Tensor] = []
    if output_type == "latent":
        kwargs["callback_on_step_end"] = lambda p, i, t, d: final.append(d["latents"]) or d
    images = pipe(**kwargs).images
    return final[-1] if final else images


@pytest.fixture
def config_of(model_cache: Path) -> Any:
    def make(source: str, **overrides: Any) -> EngineConfig:
        return EngineConfig(model=source, cache_dir=model_cache, batch_wait_ms=20, **overrides)

    return make


def qwen_edit_model() -> LoadedModel:
    """`builtin:tiny-qwenimage-edit`'s pipeline built in memory, its `Qwen2VLProcessor` made
    without its video processor, which transformers 5 insists on and which needs torchvision
    (the pipeline never passes a video). Everything else is the builtin's."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor

    from engine.tiny_dit2 import qwenimage_pipeline
    from engine.tiny_parts import qwen_tokenizer

    tokenizer = qwen_tokenizer(edit=True)
    processor = Qwen2VLProcessor.__new__(Qwen2VLProcessor)
    processor.image_processor = Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=56 * 56)
    processor.tokenizer, processor.video_processor, processor.chat_template = tokenizer, None, None
    for kind in ("image", "video"):
        token = f"<|{kind}_pad|>"
        setattr(processor, f"{kind}_token", token)
        setattr(processor, f"{kind}_token_id", tokenizer.convert_tokens_to_ids(token))
    pipe = qwenimage_pipeline(seed=6, edit=True, processor=processor)
    pipe.set_progress_bar_config(disable=True)
    profile = model_profile(ModelSpec("tiny-qwenimage-edit", QWEN_EDIT), pipe)
    return LoadedModel(pipe, torch.device("cpu"), torch.float32, profile)


@pytest.fixture(scope="module")
def qwen_edit() -> LoadedModel:
    return qwen_edit_model()


def model_of(source: str, config_of: Any, stock_models: StockModels, qwen: Any) -> LoadedModel:
    return qwen if source == QWEN_EDIT else stock_models(config_of(source))


@pytest.mark.parametrize("source", [KONTEXT, KLEIN, QWEN_EDIT])
def test_staggered_edits_of_any_steps_guidance_and_count_equal_the_stock_edit_pipeline(
    source: str, config_of: Any, stock_models: StockModels, request: pytest.FixtureRequest
) -> None:
    qwen = request.getfixturevalue("qwen_edit") if source == QWEN_EDIT else None
    model = model_of(source, config_of, stock_models, qwen)
    profile = model.profile
    assert profile.edits and type(model.pipe).__name__ in {
        "FluxKontextPipeline",
        "Flux2KleinPipeline",
        "QwenImageEditPlusPipeline",
    }
    # A second copy of the model runs the stock pipeline (the stepper's own is shared).
    stepper = Stepper(model if source == QWEN_EDIT else load_model(config_of(source)))
    n = min(2, profile.max_references)  # two pictures where the model takes several

    def pictures(seed: int) -> list[Image.Image]:
        return [picture(seed + k) for k in range(n)]

    first = edit(profile, "make it blue", *pictures(1), seed=5, steps=4, count=2)
    later = [
        edit(profile, "remove the hat", *pictures(3), seed=9),
        edit(profile, "night", *pictures(5), seed=13, steps=2, guidance=1.0),
    ]
    if source == QWEN_EDIT:  # its pipeline reads each picture at 1024² (seconds on a CPU)
        later = later[1:]
    assert first.width / first.height == pytest.approx(80 / 48, rel=0.15)  # its shape
    samples: list[Sample] = run_staggered(stepper, first, later)
    finals = []
    for sample in samples:
        expected = stock(model, sample.request, "latent")
        assert sample.latents is not None
        assert (sample.latents - expected).abs().max().item() < 1e-4, sample.request
        finals.append(sample.latents)
    # Not vacuous: the picture matters (another one, same seed and instruction, differs).
    other = edit(profile, "make it blue", *pictures(7), seed=5, steps=4, count=2)
    assert (stock(model, other, "latent") - finals[0]).abs().max().item() > 1e-4


@pytest.mark.parametrize("source", [KONTEXT, KLEIN])
@pytest.mark.parametrize("scheduling", ["step", "batch"])
async def test_the_engine_batches_edits_and_makes_the_stock_images_in_both_modes(
    source: str, scheduling: str, make_engine: EngineFactory, config_of: Any, stock_models: Any
) -> None:
    """Two users' edits of pictures of one size share their transformer forwards (one
    pipeline call for Kontext in batch scheduling, one call each with merged forwards for
    klein, whose pictures are per call); a text-to-image request on the same model runs too.
    The PNGs record the model, the instruction and the source picture."""
    engine = await make_engine(
        model=source, scheduling=scheduling, max_batch_size=4, batch_wait_ms=300
    )
    rows: list[int] = []

    def count_rows(pipe: Any) -> Any:
        hook = lambda module, args, kwargs: rows.append(int(kwargs["hidden_states"].shape[0]))  # noqa: E731
        return pipe.transformer.register_forward_pre_hook(hook, with_kwargs=True)

    handle = await engine.run_in_worker(count_rows)
    assert engine.profile.edits
    asked = [
        ImageRequest("make it blue", references=(picture(1),), seed=3, steps=3, user="a"),
        ImageRequest("add a moon", references=(picture(2),), seed=8, steps=3, count=2, user="b"),
        ImageRequest("a lighthouse at night", seed=11, steps=3, user="c"),
    ]
    jobs = [engine.submit(engine.prepare(r)) for r in asked]
    model = stock_models(config_of(source))
    for job in jobs:
        result = await job.result()
        expected = stock(model, job.request, "pil")
        assert len(result.images) == len(expected) == job.request.count
        for image, theirs in zip(result.images, expected, strict=True):
            assert np.abs(pixels(image.png) - np.asarray(theirs, dtype=np.int16)).max() <= 1
            params = read_parameters(image.png)
            assert params is not None and params.model == engine.profile.name
            assert params.prompt == job.request.prompt
            hashes = " ".join(picture_hash(p) for p in job.request.references)
            assert dict(params.extra).get("Source hash", "") == hashes
    handle.remove()
    # The two edits' three images shared forwards (twice each for klein's true CFG).
    assert max(rows) == 3
    assert jobs[0].request.key.group == jobs[1].request.key.group != jobs[2].request.key.group


@pytest.mark.skipif(not HAS_TORCHVISION, reason="Qwen2VLProcessor needs torchvision")
def test_the_qwen_edit_builtin_loads_through_from_pretrained(
    config_of: Any, stock_models: StockModels
) -> None:
    model = stock_models(config_of(QWEN_EDIT))
    assert model.profile.max_references == 3 and model.profile.family == "qwenimage-edit"
    [sample] = run_staggered(Stepper(model), edit(model.profile, "blue", picture(1)), [])
    assert sample.latents is not None
    assert (sample.latents - stock(model, sample.request, "latent")).abs().max() < 1e-4


def test_text_to_image_on_qwen_edit_runs_qwen_image_on_its_modules(qwen_edit: LoadedModel) -> None:
    t2i = text_to_image(qwen_edit)
    assert (
        type(t2i).__name__ == "QwenImagePipeline" and t2i.transformer is qwen_edit.pipe.transformer
    )
    request = validate(ImageRequest("a fox", seed=2, steps=2), Limits(), qwen_edit.profile, len)[0]
    [sample] = run_staggered(Stepper(qwen_edit), request, [])
    assert sample.latents is not None
    assert (sample.latents - stock(qwen_edit, sample.request, "latent")).abs().max() < 1e-4


@pytest.mark.parametrize("source", [KONTEXT, QWEN_EDIT])
def test_image_to_image_on_an_edit_model_runs_its_familys_pipeline_on_its_modules(
    source: str, config_of: Any, stock_models: StockModels, request: pytest.FixtureRequest
) -> None:
    """Vary and Upscale on an edit model's results: FLUX.1's and Qwen-Image's image-to-image
    pipelines on the same weights, equal to them run alone."""
    from engine.loader import image_to_image

    qwen = request.getfixturevalue("qwen_edit") if source == QWEN_EDIT else None
    model = model_of(source, config_of, stock_models, qwen)
    assert model.profile.img2img
    pipe = image_to_image(model)
    assert pipe.transformer is model.pipe.transformer
    fields = {"seed": 4, "steps": 4, "guidance": 3.5, "init_image": picture(8, (64, 64))}
    r = validate(ImageRequest("a boat", strength=0.6, **fields), Limits(), model.profile, len)[0]
    [sample] = run_staggered(Stepper(model), r, [])
    final: list[torch.Tensor] = []
    kwargs: dict[str, Any] = {
        "prompt": [r.prompt],
        "image": [r.init_image],
        "strength": r.strength,
        "num_inference_steps": r.steps,
        "width": r.width,
        "height": r.height,
        "generator": [torch.Generator("cpu").manual_seed(r.seed)],
        "output_type": "np",
        "callback_on_step_end": lambda p, i, t, d: final.append(d["latents"]) or d,
    }
    if source == QWEN_EDIT:
        kwargs |= {"true_cfg_scale": r.guidance, "negative_prompt": [" "]}
    else:
        kwargs["guidance_scale"] = r.guidance
    pipe(**kwargs)
    assert sample.latents is not None
    assert (sample.latents - final[-1]).abs().max().item() < 1e-4


# Validation: pure Python, the profiles as the families give them.
EDITS = ModelProfile(
    "kontext", "flux-kontext", 1024, 28, 2.5, "Euler", multiple=16, max_references=1
)


def test_an_edit_keeps_the_pictures_aspect_at_the_native_area_and_fits_each_picture() -> None:
    from engine.families.flux import KONTEXT_RESOLUTIONS

    large = Limits(max_width=2048, max_height=2048)
    kontext = dataclasses.replace(EDITS, reference_sizes=KONTEXT_RESOLUTIONS)
    wide = picture(1, (1600, 900))
    r = validate(ImageRequest("blue", references=(wide,)), large, kontext, len)[0]
    assert (r.width, r.height) == (1360, 768)  # 16:9 at 1024² in multiples of 16
    assert r.references[0].size == (1392, 752)  # Kontext's preferred size nearest 16:9
    qwen = dataclasses.replace(
        EDITS, max_references=3, reference_area=1024**2, reference_multiple=32
    )
    two = (picture(1, (300, 400)), picture(2, (500, 500)))
    r = validate(ImageRequest("blue", references=two), large, qwen, len)[0]
    assert [p.size for p in r.references] == [(896, 1184), (1024, 1024)]  # calculate_dimensions
    assert (r.width, r.height) == (880, 1184)  # the first picture's 3:4 at the native area


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"references": (picture(1), picture(2))}, "image", "at most 1 picture"),
        ({"references": (picture(1),), "init_image": picture(2)}, "image", "not both"),
        ({"references": (picture(1),), "strength": 0.5}, "strength", "does not apply"),
    ],
)
def test_an_edit_the_model_cannot_make_is_refused_in_one_line(
    fields: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        validate(ImageRequest("make it blue", **fields), Limits(), EDITS, len)
    assert refused.value.field == field and words in str(refused.value)
    plain = ModelProfile("sd", "sd", 512, 20, 7.0, "Euler")
    with pytest.raises(InvalidRequest, match="does not edit pictures by instruction"):
        validate(ImageRequest("blue", references=(picture(1),)), Limits(), plain, len)
