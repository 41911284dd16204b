"""Request validation: every bad value is refused with a clear message before queueing."""

from __future__ import annotations

import subprocess
import sys

import pytest

from engine import ImageRequest, InvalidRequest, Limits, ModelProfile, clean_text
from engine.request import MAX_SEED, validate
from engine.tiny_parts import clip_tokenizer

PROFILE = ModelProfile(
    name="test",
    family="sd",
    native_size=512,
    default_steps=25,
    default_guidance=7.0,
    sampler="DDIM",
    max_tokens=75,
)
LIMITS = Limits(max_width=1024, max_height=768, min_size=64, max_steps=50, max_count=4)
TOKENIZER = clip_tokenizer()


def count_tokens(text: str) -> int:
    return len(TOKENIZER.tokenize(text))


def check(**fields: object) -> tuple[ImageRequest, list[str]]:
    fields.setdefault("prompt", "a robot painting with water colours")
    return validate(ImageRequest(**fields), LIMITS, PROFILE, count_tokens)  # type: ignore[arg-type]


def test_defaults_come_from_the_model_and_a_seed_is_drawn() -> None:
    request, warnings = check()
    assert (request.width, request.height, request.steps, request.guidance) == (512, 512, 25, 7.0)
    assert request.seed is not None and 0 <= request.seed <= MAX_SEED
    assert warnings == []
    # Two bare requests get different seeds (a fixed default seed would make rerolls useless).
    assert len({check()[0].seed for _ in range(5)}) > 1


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"width": 500}, "width", "multiple of 8"),
        ({"height": 1024}, "height", "between 64 and 768"),
        ({"width": 32}, "width", "between 64 and 1024"),
        ({"steps": 0}, "steps", "between 1 and 50"),
        ({"steps": 51}, "steps", "between 1 and 50"),
        ({"count": 5}, "count", "between 1 and 4"),
        ({"count": 0}, "count", "between 1 and 4"),
        ({"guidance": -1.0}, "guidance", "between 0 and 30"),
        ({"guidance": float("nan")}, "guidance", "must be a number"),
        ({"seed": -1}, "seed", "between 0 and"),
        ({"seed": MAX_SEED + 1}, "seed", "between 0 and"),
        ({"steps": True}, "steps", "whole number"),
        ({"prompt": "   "}, "prompt", "empty"),
        ({"prompt": "\x00\u200b\u202e"}, "prompt", "empty"),
        ({"prompt": "x" * 20_000}, "prompt", "too long"),
    ],
)
def test_bad_values_are_refused_with_the_field_and_the_range(
    fields: dict[str, object], field: str, words: str
) -> None:
    with pytest.raises(InvalidRequest) as info:
        check(**fields)
    assert info.value.field == field
    assert words in str(info.value)


def test_a_prompt_over_the_token_limit_is_truncated_with_a_warning() -> None:
    long = " ".join(["robot"] * 120)
    request, warnings = check(prompt=long)
    assert request.prompt == long
    assert len(warnings) == 1
    assert "truncated" in warnings[0] and "75" in warnings[0]


def test_clean_text_drops_invisible_and_control_characters() -> None:
    assert clean_text("a\x00 cat\u200b\n on\t\u202ea mat\x07") == "a cat on a mat"
    assert clean_text("café ☕ 猫") == "café ☕ 猫"


def test_seeds_follow_on_and_wrap() -> None:
    request, _ = check(seed=MAX_SEED, count=3)
    assert request.seeds == [MAX_SEED, 0, 1]


def test_engine_errors_pickle_to_themselves() -> None:
    """An engine in another process (a Ray Serve replica) raises these to the bot."""
    import pickle
    import threading

    from engine import Busy, Cancelled, EngineDead, GenerationFailed, ShuttingDown

    unpicklable = RuntimeError("CUDA error")
    unpicklable.lock = threading.Lock()  # type: ignore[attr-defined]
    errors = [
        InvalidRequest("steps", "Steps must be between 1 and 50, not 80."),
        Busy(64, 64),
        Cancelled(),
        GenerationFailed("out of memory", ValueError("boom")),
        GenerationFailed("the GPU failed", unpicklable),
        EngineDead("worker died", ValueError("x")),
        ShuttingDown(),
    ]
    for error in errors:
        back = pickle.loads(pickle.dumps(error))
        assert type(back) is type(error) and str(back) == str(error)
        assert vars(back).keys() == vars(error).keys()
    assert pickle.loads(pickle.dumps(errors[0])).field == "steps"
    assert str(pickle.loads(pickle.dumps(errors[4])).original) == "RuntimeError: CUDA error"


def test_model_text_is_what_the_model_reads_and_loads_no_torch() -> None:
    """The front end reads prompts as the model will (for blocked words) without torch."""
    code = (
        "import sys; from engine import model_text; "
        "print(repr(model_text('a (nu()de:1.2) \\u200bfox <lora:ink:0.5> BREAK [x\\\\\\\\y]'))); "
        "print('torch' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.splitlines() == ["'a nude fox x\\\\y'", "False"]
