"""Inpainting as a first-class request on every family with an inpaint pipeline: each
request's images equal the family's stock diffusers inpaint pipeline run alone (its own
mask, strength and seed), whether it joined running requests step by step or shared a whole
call in batch scheduling; the seams are the blurred mask's overlay; refusals in one line.

The tiny random-weight pipelines (`engine/tiny*.py`, `builtin:tiny-sd-inpaint` and
`builtin:tiny-flux-fill` for the models that only inpaint), loaded through the real
`from_pretrained`, compared with a second copy called the usual way.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from engine import EngineConfig, ImageRequest, InvalidRequest, Limits, read_parameters
from engine.inpaint import blurred, overlaid
from engine.loader import LoadedModel, inpainting, load_model
from engine.request import validate
from engine.stepper import Sample, Stepper

from .conftest import EngineFactory, StockModels, pixels, run_staggered

#: Builtin -> (family, whether it only inpaints).
MODELS = {
    "builtin:tiny": ("sd", False),
    "builtin:tiny-sd-inpaint": ("sd", True),
    "builtin:tiny-flux-dev": ("flux", False),
    "builtin:tiny-flux-fill": ("flux-fill", True),
    "builtin:tiny-sd3": ("sd3", False),
    "builtin:tiny-zimage": ("zimage", False),
    "builtin:tiny-qwenimage": ("qwenimage", False),
    "builtin:tiny-flux2-klein": ("flux2", False),
}


def picture(seed: int, size: tuple[int, int] = (64, 64)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def mask(box: tuple[int, int, int, int], size: tuple[int, int] = (64, 64)) -> Image.Image:
    """White (made anew) inside `box`, black elsewhere."""
    out = Image.new("L", size, 0)
    out.paste(255, box)
    return out


def resolved(prompt: str, **fields: Any) -> ImageRequest:
    """A request as validation leaves it (every field set)."""
    base: dict[str, Any] = {"seed": 1, "steps": 3, "guidance": 3.5, "width": 64, "height": 64}
    if fields.get("mask") is not None:
        base |= {"mask_blur": 4, "strength": 1.0}
    return ImageRequest(prompt, **{**base, **fields})


def stock(model: LoadedModel, r: ImageRequest, output_type: str) -> Any:
    """The family's stock inpaint pipeline for one request alone, as its documentation
    calls it: one prompt, picture and blurred mask per image, one generator per image."""
    assert r.mask is not None and r.mask_blur is not None
    family = model.profile.family
    kwargs: dict[str, Any] = {
        "prompt": [r.prompt] * r.count,
        "image": [r.init_image] * r.count,
        "mask_image": [blurred(r.mask, r.mask_blur)] * r.count,
        "strength": r.strength,
        "num_inference_steps": r.steps,
        "height": r.height,
        "width": r.width,
        "generator": [torch.Generator("cpu").manual_seed(seed) for seed in r.seeds],
        "output_type": output_type,
    }
    if family == "qwenimage":  # true CFG (over 1, with a negative prompt: one space)
        kwargs["true_cfg_scale"] = r.guidance
        kwargs["negative_prompt"] = [r.negative_prompt or " "] * r.count
    else:
        kwargs["guidance_scale"] = r.guidance
    if family in ("sd", "sd3", "zimage"):
        kwargs["negative_prompt"] = [r.negative_prompt] * r.count
    if output_type != "latent":
        return inpainting(model)(**kwargs).images
    # The latents after the last step, as the stepper sees them (FLUX.2 klein's "latent"
    # output is unpatched).
    final: list[torch.Tensor] = []
    kwargs["callback_on_step_end"] = lambda p, i, t, d: final.append(d["latents"]) or d
    inpainting(model)(**{**kwargs, "output_type": "np"})
    return final[-1]


@pytest.fixture
def config_of(model_cache: Path) -> Any:
    def make(source: str, **overrides: Any) -> EngineConfig:
        return EngineConfig(model=source, cache_dir=model_cache, batch_wait_ms=20, **overrides)

    return make


@pytest.mark.parametrize("source", list(MODELS))
def test_staggered_inpaint_requests_equal_the_stock_inpaint_pipeline(
    source: str, config_of: Any, stock_models: StockModels
) -> None:
    """Inpaint requests of other masks, strengths and steps join a running request at their
    own first step and share its denoiser forwards: each equals the stock inpaint pipeline
    alone (latents), and differs from another mask's."""
    family, only = MODELS[source]
    config = config_of(source)
    model = stock_models(config)
    assert (model.profile.family, model.profile.inpaint, model.profile.inpaint_only) == (
        family,
        True,
        only,
    )
    stepper = Stepper(load_model(config))
    first = resolved("a harbour", init_image=picture(9), mask=mask((0, 0, 64, 32)), seed=2, steps=4)
    samples: list[Sample] = run_staggered(
        stepper,
        first,
        [
            resolved("a boat", init_image=picture(1), mask=mask((0, 0, 32, 64)), count=2),
            resolved(
                "a gull", init_image=picture(2), mask=mask((16, 16, 48, 48)), strength=0.7, seed=5
            ),
        ],
    )
    for sample in samples:
        expected = stock(model, sample.request, "latent")
        assert sample.latents is not None
        assert (sample.latents - expected).abs().max().item() < 1e-4, sample.request
    assert (samples[1].latents[0] - samples[1].latents[1]).abs().max().item() > 0.05


@pytest.mark.parametrize("scheduling", ["step", "batch"])
@pytest.mark.parametrize("source", ["builtin:tiny", "builtin:tiny-flux-fill"])
async def test_the_engine_inpaints_as_the_stock_pipeline_and_keeps_the_rest(
    source: str,
    scheduling: str,
    make_engine: EngineFactory,
    config_of: Any,
    stock_models: StockModels,
) -> None:
    """Requests with their own masks share calls in both modes; each image is the stock
    pipeline's laid over the picture through the blurred mask: outside the mask's blur the
    picture's own pixels, inside the stock pipeline's, and the PNG records A1111's fields."""
    engine = await make_engine(model=source, scheduling=scheduling, max_batch_size=4)
    asked = [
        ImageRequest(
            "a red door", init_image=picture(3), mask=mask((0, 0, 32, 64)), seed=4, steps=3
        ),
        ImageRequest(
            "a blue door", init_image=picture(4), mask=mask((32, 0, 64, 64)), seed=6, steps=3
        ),
    ]
    jobs = [engine.submit(engine.prepare(r)) for r in asked]
    model = stock_models(config_of(source))
    for job in jobs:
        r = job.request
        result = await job.result()
        assert r.mask is not None and r.init_image is not None and r.mask_blur == 4
        made = stock(model, r, "pil")[0]
        expected = np.asarray(overlaid(r.init_image, made, blurred(r.mask, 4)), np.int16)
        ours = pixels(result.images[0].png)
        assert np.abs(ours - expected).max() <= 1
        kept = np.asarray(r.mask) == 0
        edge = np.asarray(blurred(r.mask, 4)) == 0  # beyond the blur: the picture exactly
        source_pixels = np.asarray(r.init_image, np.int16)
        assert (ours[edge] == source_pixels[edge]).all() and edge.sum() > 500
        assert np.abs(ours[~kept] - source_pixels[~kept]).mean() > 20  # made anew inside
        params = read_parameters(result.images[0].png)
        assert params is not None and params.denoising_strength == 1.0
        assert ("Mask blur", "4") in params.extra
        assert ("Inpaint area", "Whole picture") in params.extra
    if scheduling == "batch":  # one call for both (same key)
        assert max(call.images for call in engine.stats.recent_calls) == 2


async def test_only_masked_inpaints_the_area_around_the_mask_at_the_request_size(
    make_engine: EngineFactory, config_of: Any, stock_models: StockModels
) -> None:
    """ "Only masked" (`inpaint_padding`) is diffusers' `padding_mask_crop`: the stock call's
    picture, pasted back into a picture larger than the model's size, which keeps its own
    size; in batch scheduling a batch of two such requests runs one stock call each."""
    engine = await make_engine(model="builtin:tiny", scheduling="batch", max_batch_size=4)
    big = picture(7, (128, 96))
    face = mask((80, 20, 104, 44), (128, 96))
    asked = [
        ImageRequest("a face", init_image=big, mask=face, inpaint_padding=8, seed=s, steps=3)
        for s in (1, 2)
    ]
    jobs = [engine.submit(engine.prepare(r)) for r in asked]
    model = stock_models(config_of("builtin:tiny"))
    for job in jobs:
        r = job.request
        assert (r.width, r.height) == (88, 64)  # 64x64's area at the picture's aspect
        result = await job.result()
        image = result.images[0]
        assert (image.width, image.height) == (128, 96)
        made = inpainting(model)(
            prompt=r.prompt,
            negative_prompt=r.negative_prompt,
            image=big,
            mask_image=blurred(face, 4),
            padding_mask_crop=8,
            strength=1.0,
            width=r.width,
            height=r.height,
            num_inference_steps=3,
            guidance_scale=r.guidance,
            generator=[torch.Generator("cpu").manual_seed(r.seeds[0])],
        ).images[0]
        assert np.abs(pixels(image.png) - np.asarray(made, np.int16)).max() <= 1
        far = np.asarray(big, np.int16)[:, :40]  # far from the face: the picture's own
        assert (pixels(image.png)[:, :40] == far).all()
        params = read_parameters(image.png)
        assert params is not None and ("Inpaint area", "Only masked") in params.extra
        assert ("Masked area padding", "8") in params.extra
    assert sum(call.images for call in engine.stats.recent_calls) == 2  # one call each


def profile_of(model: str, **changes: Any) -> Any:
    from engine import ModelProfile

    base = ModelProfile(model, "sd", 64, 4, 7.0, "DDIM", inpaint=True, inpaint_crop=True)
    return dataclasses.replace(base, **changes)


@pytest.mark.parametrize(
    ("fields", "profile", "message"),
    [
        ({"mask": mask((0, 0, 8, 8))}, {}, "A mask needs the picture it is painted on"),
        ({"init_image": picture(1), "mask": mask((0, 0, 8, 8), (32, 32))}, {}, "is 32x32"),
        ({"init_image": picture(1), "mask": Image.new("L", (64, 64))}, {}, "all black"),
        (
            {"init_image": picture(1), "mask": picture(2)},
            {},
            "must be black and white (or grey)",
        ),
        ({"init_image": picture(1), "mask": mask((0, 0, 8, 8))}, {"inpaint": False}, "cannot"),
        ({"init_image": picture(1)}, {"inpaint_only": True}, "only inpaints"),
        ({"prompt_only": True}, {"inpaint_only": True}, "only inpaints"),
        (
            {"init_image": picture(1), "mask": mask((0, 0, 8, 8)), "mask_blur": 65},
            {},
            "Mask blur must be a whole number from 0 to 64",
        ),
        (
            {"init_image": picture(1), "mask": mask((0, 0, 8, 8)), "inpaint_padding": -1},
            {},
            "Masked area padding must be a whole number from 0 to 256",
        ),
        ({"init_image": picture(1), "mask_blur": 4}, {}, "apply only to inpainting"),
        (
            {"init_image": picture(1, (300, 300)), "mask": mask((0, 0, 8, 8), (300, 300))}
            | {"inpaint_padding": 32},
            {},
            "takes pictures up to 256x256",
        ),
    ],
)
def test_bad_masks_are_refused_in_one_line(
    fields: dict[str, Any], profile: dict[str, Any], message: str
) -> None:
    fields.pop("prompt_only", None)
    request = ImageRequest("a cat", **fields)
    limits = Limits(max_width=64, max_height=64)
    with pytest.raises(InvalidRequest) as refused:
        validate(request, limits, profile_of("m", **profile), lambda text: 0)
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_grey_rgb_and_transparent_masks_are_read_as_masks() -> None:
    """An RGB mask whose channels agree is greyscale; a transparent one keeps where it is
    clear; both are fitted as the picture is (here: to the native 64x64 from 128x128)."""
    grey = mask((0, 0, 64, 128), (128, 128)).convert("RGB")
    clear = Image.new("RGBA", (128, 128), (0, 0, 0, 0))
    clear.paste((255, 255, 255, 255), (0, 0, 64, 128))
    for given in (grey, clear):
        request = ImageRequest("a cat", init_image=picture(1, (128, 128)), mask=given)
        checked, warnings = validate(request, Limits(), profile_of("m"), lambda text: 0)
        assert checked.mask is not None and checked.mask.mode == "L"
        assert checked.mask.size == (64, 64) == checked.init_image.size  # type: ignore[union-attr]
        fitted = np.asarray(checked.mask)  # Lanczos rings a little at the edge
        assert (fitted[:, :30] >= 250).all() and (fitted[:, 34:] <= 5).all()
        assert checked.strength == 1.0 and checked.mask_blur == 4 and not warnings


def test_only_masked_on_a_model_without_the_crop_is_the_whole_picture_with_a_note() -> None:
    request = ImageRequest(
        "a cat", init_image=picture(1), mask=mask((0, 0, 8, 8)), inpaint_padding=32
    )
    checked, warnings = validate(
        request, Limits(), profile_of("fill", inpaint_crop=False), lambda text: 0
    )
    assert checked.inpaint_padding is None and checked.inpaint == "whole"
    assert warnings == [
        "The model fill cannot inpaint only the masked area, so the whole picture was used."
    ]


def test_png_records_masked_fields_as_a1111() -> None:
    from engine.inpaint import inpaint_parameters

    assert inpaint_parameters(4, None) == [("Mask blur", "4"), ("Inpaint area", "Whole picture")]
    assert inpaint_parameters(0, 32)[1:] == [
        ("Inpaint area", "Only masked"),
        ("Masked area padding", "32"),
    ]
    _ = io  # the PNGs themselves are read back in the engine tests above


async def test_the_face_fix_inpaints_only_the_faces_and_refuses_a_picture_without_one(
    make_engine: EngineFactory,
) -> None:
    """`[fix] detector` (the tiny random-weight YOLOS, loaded through `from_pretrained`) finds
    the faces on the worker thread; the fix is one "Only masked" inpaint of every face's
    mask at ADetailer's strength: beyond the masks' blur the picture's own pixels, inside
    them changed. A picture without a face (a threshold nothing passes) is refused before
    any job exists; an engine without a detector says fixing is off."""
    from engine.canvas import FIX_OFF, NO_FACES, box_masks
    from engine.derived import FIX_PADDING, FIX_STRENGTH, fix_request
    from engine.pngmeta import Parameters

    engine = await make_engine(fix_detector="builtin:tiny-face-detector")
    source = picture(11, (96, 64))
    boxes = await engine.detect_faces(source)
    assert boxes and all(0 <= x1 < x2 <= 96 and 0 <= y1 < y2 <= 64 for x1, y1, x2, y2 in boxes)
    params = Parameters("a portrait", "", 3, "DDIM", 7.0, 5, 96, 64, "")
    asked = fix_request(params, source, boxes, engine.limits, detector="tiny", seed=5)
    job = engine.submit(engine.prepare(asked))
    r = job.request
    assert r.strength == FIX_STRENGTH and r.inpaint_padding == FIX_PADDING and r.mask_blur == 4
    image = (await job.result()).images[0]
    assert (image.width, image.height) == (96, 64)  # "Only masked": the picture's own size
    ours, own = pixels(image.png), np.asarray(source, np.int16)
    faces = np.zeros((64, 96), bool)
    for face in box_masks(source.size, boxes):
        faces |= np.asarray(face) > 0
    assert r.mask is not None and (np.asarray(r.mask) > 0).sum() == faces.sum()
    kept = np.asarray(blurred(r.mask, 4)) == 0  # beyond the blur: the picture exactly
    assert kept.sum() > 1000 and (ours[kept] == own[kept]).all()
    assert np.abs(ours[faces] - own[faces]).mean() > 5  # the faces made anew
    fields = read_parameters(image.png)
    assert fields is not None and fields.denoising_strength == FIX_STRENGTH
    assert ("ADetailer model", "tiny") in fields.extra
    assert ("Inpaint area", "Only masked") in fields.extra

    strict = await make_engine(fix_detector="builtin:tiny-face-detector", fix_threshold=0.95)
    assert await strict.detect_faces(source) == []
    with pytest.raises(InvalidRequest, match="No faces were found") as found:
        fix_request(params, source, [], strict.limits)
    assert str(found.value).endswith(NO_FACES.split(". ")[-1])
    off = await make_engine()
    with pytest.raises(InvalidRequest, match=r"\[fix\] detector") as refused:
        await off.detect_faces(source)
    assert FIX_OFF in str(refused.value)


async def test_a_request_with_fix_makes_its_images_then_fixes_each_as_the_stock_pipeline(
    make_engine: EngineFactory, config_of: Any, stock_models: StockModels
) -> None:
    """`fix=("faces",)` is one job of two stages: the images as the same request without
    `fix` makes them, then each one's faces (the tiny YOLOS finds one) inpainted "Only
    masked" at ADetailer's strength from its own seed, the two fixes sharing one call: each
    equals the stock inpaint pipeline run alone on the made image (diffusers'
    `padding_mask_crop`); the PNG keeps the image's parameters and adds ADetailer's fields.
    With faces and hands each area is its own crop ("Only masked" of its box alone, as
    ADetailer fixes them), pasted back: each equals the stock pipeline for that box. Where
    nothing is found (a threshold nothing passes) the images come back as made; an engine
    without the detector refuses the request in one line."""
    from engine.derived import FIX_PADDING, FIX_STRENGTH, fix_request
    from engine.fixing import HANDS_OFF
    from engine.pngmeta import Parameters

    detector = "builtin:tiny-face-detector"
    engine = await make_engine(
        fix_detector=detector,
        fix_hands_detector="builtin:tiny-hand-detector",
        scheduling="batch",
        max_batch_size=4,
    )
    asked = ImageRequest("a portrait", seed=21, steps=4, count=2)
    plain = await engine.generate(asked)
    result = await engine.generate(dataclasses.replace(asked, fix=("faces",)))
    assert result.request.fix == ("faces",) and len(result.images) == 2
    fix_calls = [c for c in engine.stats.recent_calls][-1]
    assert (fix_calls.requests, fix_calls.images) == (2, 2)  # both fixes in one call
    model = stock_models(config_of("builtin:tiny"))

    def stock_fix(picture: Image.Image, box: Any, seed: int) -> tuple[ImageRequest, np.ndarray]:
        """The fix of one box as validation resolves it, and the stock pipeline's picture."""
        source = Parameters("a portrait", "", 4, "", 7.5, seed, 64, 64, "tiny")
        r = engine.prepare(fix_request(source, picture, [box], engine.limits, seed=seed)).request
        assert (r.strength, r.inpaint_padding) == (FIX_STRENGTH, FIX_PADDING)
        assert r.mask is not None
        made = inpainting(model)(
            prompt=r.prompt,
            negative_prompt=r.negative_prompt,
            image=picture,
            mask_image=blurred(r.mask, 4),
            padding_mask_crop=FIX_PADDING,
            strength=FIX_STRENGTH,
            width=r.width,
            height=r.height,
            num_inference_steps=r.steps,
            guidance_scale=r.guidance,
            generator=[torch.Generator("cpu").manual_seed(seed)],
        ).images[0]
        return r, np.asarray(made, np.int16)

    for made, fixed in zip(plain.images, result.images, strict=True):
        assert fixed.fixed == ("faces",) and fixed.seed == made.seed
        picture = Image.open(io.BytesIO(made.png)).convert("RGB")
        (box,) = await engine.detect_faces(picture)
        r, stock_image = stock_fix(picture, box, made.seed)
        assert r.mask is not None
        ours, own = pixels(fixed.png), pixels(made.png)
        assert np.abs(ours - stock_image).max() <= 1
        kept = np.asarray(blurred(r.mask, 4)) == 0
        assert kept.sum() > 1000 and (ours[kept] == own[kept]).all()
        assert np.abs(ours[~kept] - own[~kept]).mean() > 3  # the face made again
        fields = read_parameters(fixed.png)
        assert fields is not None and fields.prompt == "a portrait" and fields.seed == made.seed
        assert fields.denoising_strength is None  # the image's own: made from the prompt
        assert ("ADetailer model", "tiny-face-detector") in fields.extra
        assert ("ADetailer denoising strength", "0.4") in fields.extra
        assert ("Faces fixed", "1") in fields.extra

    # Faces and hands: two crops of one image, in one call, each pasted back.
    calls = len(engine.stats.recent_calls)
    one = await engine.generate(dataclasses.replace(asked, count=1, fix=("faces", "hands")))
    (both,) = one.images
    made = plain.images[0]
    assert both.fixed == ("faces", "hands")
    assert [(c.requests, c.images) for c in engine.stats.recent_calls][calls + 1 :] == [(2, 2)]
    picture = Image.open(io.BytesIO(made.png)).convert("RGB")
    own, ours = pixels(made.png), pixels(both.png)
    areas = [*await engine.detect(picture, "faces"), *await engine.detect(picture, "hands")]
    assert len(areas) == 2
    changes = [stock_fix(picture, box, made.seed)[1] - own for box in areas]
    for change in changes:
        alone = change.any(-1) & ~np.logical_or.reduce(
            [c.any(-1) for c in changes if c is not change]
        )
        assert alone.sum() > 50  # each area is the stock pipeline's for its box alone
        assert np.abs(ours[alone] - (own + change)[alone]).max() <= 1
    untouched = ~np.logical_or.reduce([c.any(-1) for c in changes])
    assert (ours[untouched] == own[untouched]).all()
    fields = read_parameters(both.png)
    assert fields is not None and ("ADetailer model 2nd", "tiny-hand-detector") in fields.extra
    assert {("Faces fixed", "1"), ("Hands fixed", "1")} <= set(fields.extra)

    strict = await make_engine(fix_detector=detector, fix_threshold=0.95)
    nothing = await strict.generate(dataclasses.replace(asked, fix=("faces",)))
    assert [i.png for i in nothing.images] == [i.png for i in plain.images]
    assert all(i.fixed == () for i in nothing.images)
    off = await make_engine()
    with pytest.raises(InvalidRequest, match=r"\[fix\] detector"):
        off.prepare(dataclasses.replace(asked, fix=("faces",)))
    with pytest.raises(InvalidRequest) as no_hands:
        strict.prepare(dataclasses.replace(asked, fix=("hands",)))
    assert str(no_hands.value).endswith(HANDS_OFF)


async def test_a_fixing_job_is_cancelled_or_kept_for_a_restart_as_one_job(
    make_engine: EngineFactory,
) -> None:
    """A request with `fix` is one job to its caller: cancelled while its images are made,
    it ends `Cancelled` and leaves nothing running; its steps count on into the fix's; an
    engine closing under it ends it `ShuttingDown` (a front end keeps it for a restart), not
    as a failure of its own."""
    from engine import Cancelled, JobState, ShuttingDown

    detector = "builtin:tiny-face-detector"
    engine = await make_engine(fix_detector=detector, scheduling="step")
    asked = ImageRequest("a portrait", seed=3, steps=40, fix=("faces",))
    job = engine.submit(engine.prepare(asked))
    async for progress in job.updates():
        if progress.state is JobState.RUNNING and progress.step >= 1:
            assert progress.total_steps == 40 + 16  # the image's steps, then the fix's
            break
    assert job.cancel()
    with pytest.raises(Cancelled):
        await job.result()
    done = await engine.generate(ImageRequest("after", seed=1, steps=2))
    assert done.images and not engine.running  # the cancelled stage left nothing behind

    closing = await make_engine(fix_detector=detector, scheduling="step")
    job = closing.submit(closing.prepare(asked))
    async for progress in job.updates():
        if progress.state is JobState.RUNNING:
            break
    await closing.close(grace_s=0.0)
    with pytest.raises(ShuttingDown):
        await job.result()
