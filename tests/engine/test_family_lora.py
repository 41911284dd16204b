"""LoRAs on every family beside SD (whose own tests are test_lora.py and test_models.py): a
`<lora:name:w>` in the prompt goes through diffusers' LoRA loader of the model's family.

A tiny LoRA is made with peft for each tiny model's transformer (`testkit.lora`). Through the
real engine, in both scheduling modes: the LoRA changes the image, weight 0 does not, every
image equals the stock pipeline of its family with that LoRA (or none) loaded and set, run
alone, and a batch (a tick) never mixes adapter sets. A new family joins with one line in
`SOURCES`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine import EngineConfig, ImageRequest, LoraSpec
from engine.loader import LoadedModel, load_model
from engine.lora import LoraSet, load_loras
from engine.tiny import builtin_folder
from testkit.lora import make_tiny_lora

from .conftest import EngineFactory, pixels
from .test_families import stock

#: The tiny model of each family served beside SD, and its pipeline class.
SOURCES = {
    "builtin:tiny-flux": "FluxPipeline",
    "builtin:tiny-flux-dev": "FluxPipeline",
    "builtin:tiny-chroma": "ChromaPipeline",
}


@pytest.fixture(scope="module")
def lora_files(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One LoRA per tiny model, made for its own transformer."""
    from diffusers import DiffusionPipeline

    tmp = tmp_path_factory.mktemp("family-loras")
    out = {}
    for n, source in enumerate(SOURCES):
        pipe = DiffusionPipeline.from_pretrained(
            builtin_folder(source, model_cache), local_files_only=True
        )
        assert type(pipe).__name__ == SOURCES[source]
        name = source.removeprefix("builtin:")
        out[source] = make_tiny_lora(pipe, tmp / f"{name}.safetensors", seed=10 + n)
    return out


@pytest.fixture(scope="module")
def stock_with() -> Any:
    """The model of `config` loaded anew with only `loras` loaded and set, as a diffusers user
    would (`load_lora_weights`, `set_adapters`), cached per (config, set)."""
    made: dict[tuple[EngineConfig, LoraSet], LoadedModel] = {}

    def get(config: EngineConfig, file: Path, loras: LoraSet) -> LoadedModel:
        if (config, loras) not in made:
            model = load_model(config)
            for name, _ in loras:
                model.pipe.load_lora_weights(str(file), adapter_name=name)
            if loras:
                model.pipe.set_adapters(
                    [n for n, _ in loras], adapter_weights=[w for _, w in loras]
                )
            made[config, loras] = model
        return made[config, loras]

    return get


@pytest.mark.parametrize("source", list(SOURCES))
@pytest.mark.parametrize("scheduling", ["step", "batch"])
async def test_a_lora_changes_the_image_as_the_stock_pipeline_with_it_does(
    source: str,
    scheduling: str,
    make_engine: EngineFactory,
    model_cache: Path,
    lora_files: dict[str, Path],
    stock_with: Any,
) -> None:
    file = lora_files[source]
    engine = await make_engine(
        model=source,
        scheduling=scheduling,
        loras=(LoraSpec("ink", str(file), weight=0.8),),
        max_batch_size=8,
        batch_wait_ms=300,
    )
    assert engine.scheduling == scheduling
    asked = [
        ImageRequest("a lighthouse", seed=3, steps=3, guidance=4.0, user="a"),
        ImageRequest("a lighthouse <lora:ink>", seed=3, steps=3, guidance=4.0, user="b"),
        ImageRequest("a lighthouse <lora:ink:0>", seed=3, steps=3, guidance=4.0, user="c"),
        ImageRequest("a lighthouse <lora:ink:0.4>", seed=3, steps=3, guidance=4.0, user="d"),
        ImageRequest("two owls", seed=8, steps=3, guidance=4.0, count=2, user="e"),
    ]
    jobs = [engine.submit(engine.prepare(r)) for r in asked]
    results = [await job.result() for job in jobs]
    sets = [job.request.loras for job in jobs]
    assert sets == [(), (("ink", 0.8),), (), (("ink", 0.4),), ()]

    plain, full, zero, light, _ = (pixels(r.images[0].png) for r in results)
    assert np.abs(full - plain).max() > 2  # the LoRA does something
    assert np.abs(light - plain).max() > 0 and np.abs(light - full).max() > 0
    assert np.array_equal(zero, plain)  # weight 0 is the base model
    config = dataclasses.replace(engine.config, loras=())
    for job, result in zip(jobs, results, strict=True):
        model = stock_with(config, file, job.request.loras)
        expected = stock(model, job.request, "pil")
        for image, theirs in zip(result.images, expected, strict=True):
            assert np.abs(pixels(image.png) - np.asarray(theirs, dtype=np.int16)).max() <= 1

    # One call per adapter set: the three plain requests share theirs, each LoRA set is alone.
    calls = engine.stats.recent_calls
    if scheduling == "batch":
        assert sorted(c.requests for c in calls) == [1, 1, 3]
    else:
        assert max(c.requests for c in calls) == 3
        assert {c.requests for c in calls} <= {1, 2, 3}


@pytest.mark.parametrize("source", list(SOURCES))
def test_a_lora_of_another_family_is_refused_in_one_line(
    source: str, model_cache: Path, tmp_path: Path
) -> None:
    from diffusers import DiffusionPipeline

    sd = DiffusionPipeline.from_pretrained(
        builtin_folder("builtin:tiny", model_cache), local_files_only=True
    )
    file = make_tiny_lora(sd, tmp_path / "sd.safetensors", seed=1)
    pipe = DiffusionPipeline.from_pretrained(
        builtin_folder(source, model_cache), local_files_only=True
    )
    with pytest.raises(ValueError) as caught:
        load_loras(pipe, [LoraSpec("sd", str(file))], model_name="m")
    message = str(caught.value)
    assert message.startswith("LoRA sd cannot load into model m: none of its weights belong to")
    assert "transformer" in message and "\n" not in message
    assert not any(pipe.get_list_adapters().values())
