"""`engine.describe`: four candidate prompts for a picture from the describe model, on its
own thread, loaded on first use and counted in the memory budget beside the image models.

The tiny random-weight Florence-2 of `engine/tiny_caption.py` (`builtin:tiny-florence2`),
loaded through transformers' real `from_pretrained`: its prompts are gibberish, the
plumbing is real.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import EngineConfig, EngineError, ModelSpec
from engine.config import DescribeConfig
from engine.worker import Worker
from testkit.tagger import tagger_bytes, tagger_scores, top_tags

from .conftest import EngineFactory

TINY_FLORENCE = DescribeConfig("builtin:tiny-florence2")


def picture(seed: int, size: tuple[int, int] = (70, 50)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


async def test_four_distinct_prompts_the_same_each_time_without_blocking_the_loop(
    make_engine: EngineFactory,
) -> None:
    engine = await make_engine(describe=TINY_FLORENCE)
    assert engine.describer_bytes == 0  # not loaded until asked
    turns = 0

    async def spin() -> None:  # counts the event loop's turns while describing runs
        nonlocal turns
        while True:
            await asyncio.sleep(0)
            turns += 1

    spinner = asyncio.create_task(spin())
    first = await engine.describe(picture(1))
    spinner.cancel()
    assert turns > 10  # the loop kept running: the model ran on another thread
    assert len(first) == 4 and len(set(first)) == 4
    assert all(p and p == " ".join(p.split()) for p in first)
    assert engine.describer_bytes > 0  # counted once loaded
    assert await engine.describe(picture(1)) == first  # beam search: deterministic


async def test_describing_off_is_one_clear_error(make_engine: EngineFactory) -> None:
    engine = await make_engine(describe=DescribeConfig(""))
    with pytest.raises(EngineError, match=r"Describing pictures is off here"):
        await engine.describe(picture(1))


async def test_the_describe_model_fits_beside_the_image_models_or_yields_to_them(
    model_cache: Path,
) -> None:
    """Within `max_memory_gb`: the describe model loads beside one tiny model, and the tagger
    beside both, each counted; both are unloaded when a second image model loads and would
    not fit with them, and are then refused in one line (nothing half-loaded) until there is
    room again."""
    plain = EngineConfig(model="builtin:tiny", cache_dir=model_cache)
    sizer = Worker(plain)
    await sizer.start()
    tiny = sizer.size("tiny")
    await sizer.close()
    models = (ModelSpec("tiny", "builtin:tiny"), ModelSpec("tiny-b", "builtin:tiny-b"))
    budget = 2 * tiny + 1000  # two tiny models, not the describe model beside them
    config = dataclasses.replace(
        plain,
        models=models,
        max_loaded_models=2,
        max_memory_gb=budget / 2**30,
        describe=DescribeConfig("builtin:tiny-florence2", tagger="builtin:tiny-tagger"),
    )
    worker = Worker(config)
    assert await worker.start() == ["tiny-b", "tiny"]
    try:
        with pytest.raises(EngineError, match="does not fit beside the loaded models"):
            await worker.describe(picture(1))
        assert worker.describer_bytes == 0
        await worker.unload("tiny-b")
        assert len(await worker.describe(picture(1))) == 4  # beside one model it fits
        florence = worker.describer_bytes
        assert 0 < florence < tiny
        assert len(await worker.describe(picture(1), "tags")) == 4
        assert worker.describer_bytes == florence + tagger_bytes(model_cache)
        await worker.load("tiny-b")  # the image model comes first
        assert worker.describer_bytes == 0 and worker.is_loaded("tiny-b")
        with pytest.raises(EngineError, match="tagger 'builtin:tiny-tagger' holds"):
            await worker.describe(picture(1), "tags")
    finally:
        await worker.close()


TINY_TAGGER = DescribeConfig("", tagger="builtin:tiny-tagger")


async def test_tag_prompts_are_the_tagger_s_top_labels_without_ratings(
    make_engine: EngineFactory, model_cache: Path
) -> None:
    """With only a tagger configured, the prompts are tags: the labels above the threshold
    in order of confidence as A1111 writes them, the ratings left out, then fewer of them;
    its bytes count beside the image models."""
    engine = await make_engine(describe=TINY_TAGGER)
    image = picture(3, (70, 50))
    prompts = await engine.describe(image)  # the only style configured: tags
    assert prompts == await engine.describe(image, "tags")
    kept = top_tags(model_cache, image)  # the tagger's own answer, from transformers
    assert len(kept) >= 4, kept  # enough tags to make four prompts of this picture
    assert prompts[0] == ", ".join(kept)
    assert len(prompts) == 4 and all(prompts[0].startswith(p) for p in prompts[1:])
    assert [len(p.split(", ")) for p in prompts] == sorted(
        {len(kept) - len(kept) * n // 4 for n in range(4)}, reverse=True
    )
    scores = tagger_scores(model_cache, image)
    rated = [t for t in scores if t.startswith("rating:") and scores[t] > 0.35]
    assert rated and not any(r.removeprefix("rating:") in prompts[0].split(", ") for r in rated)
    assert 0 < engine.describer_bytes == tagger_bytes(model_cache)  # counted once loaded
    with pytest.raises(EngineError, match=r"as prose is off here \(\[describe\] model is empty"):
        await engine.describe(image, "prose")


async def test_tags_asked_without_a_tagger_is_one_clear_error(make_engine: EngineFactory) -> None:
    engine = await make_engine(describe=TINY_FLORENCE)
    with pytest.raises(EngineError, match=r"as tags is off here \(\[describe\] tagger is empty"):
        await engine.describe(picture(1), "tags")
    assert engine.describer_bytes == 0


def test_a_describe_model_that_can_never_fit_stops_start_up(model_cache: Path) -> None:
    """Start-up's memory check (`budget.check_memory`) estimates the describe model and the
    tagger from their files' headers, as the image models: one larger than `max_memory_gb`
    alone is named in one line before anything loads (it could never be asked)."""
    from engine.budget import check_memory, reader_estimates
    from engine.tiny_caption import caption_folder

    caption_folder("builtin:tiny-florence2", model_cache)  # on this disk, as after a download
    tagger = tagger_bytes(model_cache)
    config = EngineConfig(
        model="builtin:tiny",
        cache_dir=model_cache,
        describe=DescribeConfig("builtin:tiny-florence2", tagger="builtin:tiny-tagger"),
    )
    estimates = reader_estimates(config)
    assert estimates["tagger"] == tagger  # float32 on the CPU, as loaded
    assert estimates["model"] > tagger
    image_model = check_memory(config)["tiny"]
    between = dataclasses.replace(config, max_memory_gb=(image_model + tagger) / 2**30)
    assert check_memory(between) == {"tiny": image_model}  # each fits alone
    small = dataclasses.replace(between, model="no-such/model-here")  # no files: no estimate
    small = dataclasses.replace(small, max_memory_gb=(tagger + 100) / 2**30)
    with pytest.raises(ValueError, match=r"^the describe model builtin:tiny-florence2 needs "):
        check_memory(small)
    tagger_only = dataclasses.replace(
        small, describe=DescribeConfig("", tagger="builtin:tiny-tagger")
    )
    assert check_memory(tagger_only) == {}
    tight = dataclasses.replace(tagger_only, max_memory_gb=(tagger - 100) / 2**30)
    with pytest.raises(ValueError, match=r"leave \[describe\] tagger empty$"):
        check_memory(tight)


async def test_a_wd_tagger_s_remote_processor_is_read_by_transformers_own_in_bgr(
    make_engine: EngineFactory, model_cache: Path, tmp_path: Path
) -> None:
    """A folder laid out as `p1atdev/wd-swinv2-tagger-v3-hf` is (its image processor named as
    remote code, `auto_map` and all, the code itself absent): the tagger never runs remote
    code nor asks about it; transformers' ViT processor reads the same settings and the
    picture is given in BGR, so the prompts are the tagger's own for the channels swapped."""
    import json
    import shutil

    from engine.tiny_caption import caption_folder

    folder = tmp_path / "wd-tagger"
    shutil.copytree(caption_folder("builtin:tiny-tagger", model_cache), folder)
    settings = json.loads((folder / "preprocessor_config.json").read_text())
    settings["image_processor_type"] = "WDTaggerImageProcessor"
    settings["auto_map"] = {"AutoImageProcessor": "image_processing_tagger.WDTaggerImageProcessor"}
    (folder / "preprocessor_config.json").write_text(json.dumps(settings))
    engine = await make_engine(describe=DescribeConfig("", tagger=str(folder)))
    image = picture(4, (64, 48))
    bgr = Image.merge("RGB", image.split()[::-1])
    prompts = await engine.describe(image, "tags")
    assert prompts[0] == ", ".join(top_tags(model_cache, bgr))  # the builtin's, in BGR
    assert prompts[0] != ", ".join(top_tags(model_cache, image))
