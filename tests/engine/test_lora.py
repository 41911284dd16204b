"""Named LoRAs on the real tiny pipeline: loaded once, switched per call.

The promise: with a set active, a pipeline holding many LoRAs makes the image that a fresh
stock pipeline makes with only that set loaded and `set_adapters` called, whatever was active
before; with none active it makes the base model's image exactly. Broken LoRAs fail loading
with one line naming the LoRA and the model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import CLIPTextModel

from engine.lora import LoraSet, LoraSpec, LoraState, load_loras, lora_set, resolve_source
from engine.tiny import builtin_folder
from engine.tiny_parts import clip_tokenizer, tiny_text_config, tiny_unet
from testkit.lora import make_tiny_lora

MODEL = "builtin:tiny"


@pytest.fixture(scope="module")
def folder(model_cache: Path) -> Path:
    return builtin_folder(MODEL, model_cache)


def fresh(folder: Path) -> Any:
    """A stock pipeline, loaded the way a diffusers user loads it."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def image(pipe: Any) -> np.ndarray:
    generator = torch.Generator("cpu").manual_seed(7)
    return pipe(
        "a red fox",
        num_inference_steps=2,
        height=64,
        width=64,
        guidance_scale=7.0,
        generator=generator,
        output_type="np",
    ).images


@pytest.fixture(scope="module")
def files(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """UNet-only LoRAs "a" and "b", "t" with text-encoder weights too, and "other" for a UNet
    of another shape."""
    tmp = tmp_path_factory.mktemp("loras")
    pipe = fresh(folder)
    return {
        "a": make_tiny_lora(pipe, tmp / "a.safetensors", seed=1),
        "b": make_tiny_lora(pipe.unet, tmp / "b.safetensors", seed=2, rank=2),
        "t": make_tiny_lora(pipe, tmp / "t.safetensors", seed=4, text_encoder=True),
        "other": make_tiny_lora(tiny_unet(cross_attention_dim=16), tmp / "x.safetensors", seed=3),
    }


@pytest.fixture(scope="module")
def base(folder: Path) -> np.ndarray:
    return image(fresh(folder))


StockImage = Callable[[LoraSet], np.ndarray]


@pytest.fixture(scope="module")
def stock_image(folder: Path, files: dict[str, Path]) -> StockImage:
    """The image of a fresh stock pipeline with only `loras` loaded and set, run alone."""
    made: dict[LoraSet, np.ndarray] = {}

    def get(loras: LoraSet) -> np.ndarray:
        if loras not in made:
            pipe = fresh(folder)
            for name, _ in loras:
                pipe.load_lora_weights(str(files[name]), adapter_name=name)
            pipe.set_adapters([n for n, _ in loras], adapter_weights=[w for _, w in loras])
            made[loras] = image(pipe)
        return made[loras]

    return get


@pytest.fixture(scope="module")
def loaded(folder: Path, files: dict[str, Path]) -> Any:
    """A pipeline holding "a", "b" and "t" (and not "c", which is for another model)."""
    pipe = fresh(folder)
    specs = [
        LoraSpec("a", str(files["a"]), 0.8, (MODEL,)),
        LoraSpec("b", str(files["b"])),
        LoraSpec("t", str(files["t"]), models=(MODEL, "another")),
        LoraSpec("c", str(files["other"]), models=("someone/else",)),
    ]
    load_loras(pipe, specs, model_name=MODEL)
    return pipe


def test_loading_leaves_the_base_model_unchanged(loaded: Any, base: np.ndarray) -> None:
    assert loaded.get_list_adapters() == {"unet": ["a", "b", "t"], "text_encoder": ["t"]}
    assert np.array_equal(image(loaded), base)


def test_an_active_lora_matches_stock_diffusers(
    loaded: Any, stock_image: StockImage, base: np.ndarray
) -> None:
    state = LoraState(loaded)
    state.activate((("a", 0.8),))
    ours = image(loaded)
    assert np.abs(ours - base).max() > 1e-2  # the LoRA does something
    assert np.abs(ours - stock_image((("a", 0.8),))).max() < 1e-4
    state.activate(())


def test_switching_sets_leaves_no_trace(
    loaded: Any, stock_image: StockImage, base: np.ndarray
) -> None:
    """ "t" changes the prompt's embeddings too; the "a" after it shows that they switch back."""
    state = LoraState(loaded)
    sequence: list[LoraSet] = [
        (),
        (("a", 0.8),),
        (("b", 1.0),),
        lora_set({"b": 0.5, "a": 0.8}.items()),
        (("t", 0.7),),
        (("a", 0.8),),
        (),
    ]
    images = []
    for loras in sequence:
        state.activate(loras)
        assert state.active == loras
        images.append(image(loaded))
    assert np.array_equal(images[0], base) and np.array_equal(images[-1], base)
    for loras, got in zip(sequence[1:-1], images[1:-1], strict=True):
        assert np.abs(got - stock_image(loras)).max() < 1e-4, loras
    assert len({got.tobytes() for got in images}) == 5  # each set makes its own image


def test_the_tiny_lora_is_deterministic_and_leaves_its_unet_alone(
    folder: Path, files: dict[str, Path], tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    pipe = fresh(folder)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    again = make_tiny_lora(pipe, tmp_path / "a.safetensors", seed=1)
    other = make_tiny_lora(pipe, tmp_path / "a2.safetensors", seed=9)
    first, second, third = (load_file(p) for p in (files["a"], again, other))
    assert first.keys() == second.keys() and all(first[k].equal(second[k]) for k in first)
    assert any(not first[k].equal(third[k]) for k in first)
    assert all(k.startswith("unet.") for k in first)
    after = pipe.unet.state_dict()
    assert after.keys() == before.keys() and all(after[k].equal(before[k]) for k in before)


@pytest.fixture(scope="module")
def broken(files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("broken")
    save_file({"conv.weight": torch.zeros(2, 2)}, tmp / "plain.safetensors")
    flux = {"transformer.blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 8)}
    save_file(flux, tmp / "flux.safetensors")
    text = CLIPTextModel(tiny_text_config(clip_tokenizer(), hidden_size=16, intermediate_size=20))
    wide = SimpleNamespace(unet=tiny_unet(), text_encoder=text)  # its UNet part fits
    make_tiny_lora(wide, tmp / "text.safetensors", seed=5, text_encoder=True)
    return {
        "other-text-encoder": str(tmp / "text.safetensors"),
        "other-shape": str(files["other"]),
        "missing": str(tmp / "missing.safetensors"),
        "not-a-lora": str(tmp / "plain.safetensors"),
        "other-model": str(tmp / "flux.safetensors"),
        "dotted.name": str(files["a"]),
    }


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("other-shape", "layer shapes do not fit this model (size mismatch for"),
        ("other-text-encoder", "layer shapes do not fit this model's text encoder"),
        ("missing", "no such file"),
        ("not-a-lora", "Invalid LoRA checkpoint"),
        ("other-model", "none of its weights belong"),
        ("dotted.name", "no '.'"),
    ],
)
def test_a_lora_that_cannot_load_says_which_in_one_line(
    name: str,
    why: str,
    broken: dict[str, str],
    files: dict[str, Path],
    folder: Path,
    base: np.ndarray,
) -> None:
    pipe = fresh(folder)
    specs = [LoraSpec("a", str(files["a"])), LoraSpec(name, broken[name])]
    with pytest.raises(ValueError) as caught:
        load_loras(pipe, specs, model_name=MODEL)
    message = str(caught.value)
    assert message.startswith(f"LoRA {name} cannot load into model {MODEL}: "), message
    assert why in message and "\n" not in message, message
    assert pipe.get_list_adapters() == {"unet": ["a"]}  # the broken one left nothing behind
    modules = [*pipe.unet.modules(), *pipe.text_encoder.modules()]
    assert not any(name in getattr(m, "lora_A", {}) for m in modules)
    assert np.array_equal(image(pipe), base)  # and the good one is inactive


class Counting:
    """The pipeline, counting the switches that reach diffusers."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        if name in {"set_adapters", "disable_lora", "enable_lora"}:
            self.calls.append(name)
        return getattr(self.pipe, name)


def test_an_unchanged_set_is_not_set_again(loaded: Any) -> None:
    counting = Counting(loaded)
    state = LoraState(counting)
    for loras in [(("a", 0.8),), (("a", 0.8),), (("a", 0.5),), (), (), (("a", 0.5),)]:
        state.activate(loras)
    assert counting.calls == [
        "set_adapters",
        "enable_lora",
        "set_adapters",
        "disable_lora",
        "set_adapters",
        "enable_lora",
    ]
    state.activate(())
    with pytest.raises(ValueError, match="LoRA zz is not loaded"):
        state.activate((("zz", 1.0),))


def test_lora_sets_and_sources() -> None:
    assert lora_set([("b", 1), ("a", 0.5), ("c", 0)]) == (("a", 0.5), ("b", 1.0))
    with pytest.raises(ValueError, match="named twice"):
        lora_set([("a", 1), ("a", 2)])
    assert LoraSpec("x", "s").fits("any") and not LoraSpec("x", "s", models=("m",)).fits("n")
    hub = Path("/cache")
    assert resolve_source("org/repo", hub) == ("org/repo", {"cache_dir": "/cache/hub"})
    assert resolve_source("org/repo/sub/dir/w.safetensors") == (
        "org/repo",
        {"weight_name": "w.safetensors", "subfolder": "sub/dir"},
    )
    assert resolve_source("org/repo/w.safetensors")[1] == {"weight_name": "w.safetensors"}
    assert resolve_source("/abs/x.safetensors", hub) == ("/abs/x.safetensors", {})
    assert resolve_source("loras/x.safetensors") == ("loras/x.safetensors", {})
