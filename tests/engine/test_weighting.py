"""A1111 prompt weighting and long prompts (`engine.weighting`) on the real tiny pipelines.

The parser is checked against A1111's own documented examples; the encoder against diffusers'
`encode_prompt` (a prompt without syntax must encode bit for bit as the stock pipeline encodes
it) and against A1111's chunking and emphasis rules written out by hand here.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

from engine import EngineConfig, ImageRequest, InvalidRequest
from engine.tiny import builtin_folder
from engine.weighting import (
    CHUNK_TOKENS,
    MAX_WEIGHT,
    Embeddings,
    WeightError,
    checked_attention,
    chunks_needed,
    encode,
    is_plain,
    needs_embeddings,
    parse_attention,
    plain_text,
)

from .conftest import EngineFactory

W = 77  # one chunk: BOS, 75 tokens, EOS
WORDS = "robot cat dog horse dragon castle city forest mountain river lake ocean sea sky".split()


def words(n: int, start: int = 0) -> str:
    """`n` one-token words of the tiny vocabulary."""
    return " ".join(WORDS[(start + i) % len(WORDS)] for i in range(n))


@pytest.fixture(scope="module")
def sd(model_cache: Path) -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline.from_pretrained(
        builtin_folder("builtin:tiny", model_cache), local_files_only=True
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sd2(sd: StableDiffusionPipeline) -> StableDiffusionPipeline:
    """The tiny SD pipeline with SD 2.x's padding: `!` after EOS, not more EOS."""
    tokenizer = copy.deepcopy(sd.tokenizer)
    tokenizer.pad_token = "!"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    return StableDiffusionPipeline(**{**sd.components, "tokenizer": tokenizer})


@pytest.fixture(scope="module")
def sdxl(sdxl_folder: Path) -> StableDiffusionXLPipeline:
    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl_folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.config.force_zeros_for_empty_prompt
    return pipe


def enc(pipe: Any, prompt: str, negative: str = "", **kw: Any) -> Embeddings:
    family = "sdxl" if isinstance(pipe, StableDiffusionXLPipeline) else "sd"
    options: dict[str, Any] = {"device": "cpu", "count": 1, "cfg": True, **kw}
    with torch.inference_mode():
        return encode(pipe, family, prompt, negative, **options)


def stock(
    pipe: Any, prompt: str, negative: str | None = None, count: int = 1, cfg: bool = True
) -> Any:
    """`pipe.encode_prompt` as the engine calls it."""
    with torch.inference_mode():
        return pipe.encode_prompt(
            prompt=prompt,
            device="cpu",
            num_images_per_prompt=count,
            do_classifier_free_guidance=cfg,
            negative_prompt=negative,
        )


# --- the parser -----------------------------------------------------------------------------

PARSED = [
    # A1111's docstring examples, outputs exactly as documented there
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [
            ("a ", 1.0),
            ("house", 1.5730000000000004),
            (" ", 1.1),
            ("on", 1.0),
            (" a ", 1.1),
            ("hill", 0.55),
            (", sun, ", 1.1),
            ("sky", 1.4641000000000006),
            (".", 1.1),
        ],
    ),
    # the empty prompt, and prompts that are only syntax
    ("", [("", 1.0)]),
    ("()", [("", 1.0)]),
    ("[]", [("", 1.0)]),
    # nesting and explicit weights
    ("((word))", [("word", 1.2100000000000002)]),
    ("[[word]]", [("word", 1 / 1.1 / 1.1)]),
    ("(a (b:2) c)", [("a ", 1.1), ("b", 2.2), (" c", 1.1)]),
    ("(a:1.3)", [("a", 1.3)]),
    ("(a: 1.5 )", [("a", 1.5)]),  # spaces around the weight: A1111 >= 1.6
    ("(a:-1)", [("a", -1.0)]),
    ("(a:.5)", [("a", 0.5)]),
    ("(robot:1.0)", [("robot", 1.0)]),
    ("[(a)]", [("a", 1.0)]),  # 1.1 * (1/1.1) is exactly 1.0
    # unbalanced closers and stray colons are text
    ("a) b] c", [("a) b] c", 1.0)]),
    ("[a", [("a", 1 / 1.1)]),
    ("(a:b)", [("a:b", 1.1)]),
    ("a:1.2)", [("a:1.2)", 1.0)]),
    ("[a:1.5)", [("a:1.5)", 1 / 1.1)]),  # a weight closes only a round bracket
    # escapes
    ("\\\\", [("\\", 1.0)]),
    ("a\\b", [("ab", 1.0)]),  # a lone backslash escapes nothing and vanishes
    ("\\((a)\\)", [("(", 1.0), ("a", 1.1), (")", 1.0)]),
    # BREAK: its own marker, whitespace around it eaten, merged neighbours kept apart
    ("a BREAK b", [("a", 1.0), ("BREAK", -1), ("b", 1.0)]),
    ("BREAK", [("", 1.0), ("BREAK", -1), ("", 1.0)]),
    ("a BREAK BREAK b", [("a", 1.0), ("BREAK", -1), ("", 1.0), ("BREAK", -1), ("b", 1.0)]),
    ("aBREAK b BREAKING", [("aBREAK b BREAKING", 1.0)]),
    ("(a BREAK b)", [("a", 1.1), ("BREAK", -1.1), ("b", 1.1)]),  # A1111 quirk: a word now
]


@pytest.mark.parametrize(("text", "expected"), PARSED)
def test_parse_attention_is_a1111s(text: str, expected: list[tuple[str, float]]) -> None:
    assert parse_attention(text) == expected


def test_a_weight_that_is_not_a_number_raises_as_in_a1111() -> None:
    with pytest.raises(ValueError):
        parse_attention("(a:1.2.3)")


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("a (cat:" + "9" * 60 + ")", "'cat' weighs 1e+60"),
        ("a (cat:" + "9" * 400 + ")", "'cat' weighs inf"),  # float() of it is infinity
        ("a (b:10.5) c", "'b' weighs 10.5"),
        ("(x:-11)", "'x' weighs -11"),
        ("((cat:5):3)", "'cat' weighs 15"),  # nesting multiplies
        ("(" * 26 + "deep" + ")" * 26, "'deep' weighs 11.9"),  # 1.1 ** 26
        ("(a:1.2.3)", "is not a number"),
    ],
)
def test_weights_that_would_overflow_are_refused_with_the_range(text: str, said: str) -> None:
    with pytest.raises(WeightError, match=re.escape(said)) as info:
        checked_attention(text, "negative prompt")
    message = str(info.value)
    assert "negative prompt" in message and message.endswith(".")
    if "number" not in said:
        assert f"between {-MAX_WEIGHT:g} and {MAX_WEIGHT:g}" in message


@pytest.mark.parametrize(
    "text", ["(cat:10)", "(cat:-10)", "(a BREAK b)", "BREAK", "[" * 100 + "x", "(" * 24 + "x"]
)
def test_weights_within_the_range_are_a1111s(text: str) -> None:
    assert checked_attention(text) == parse_attention(text)


def test_the_encoder_itself_refuses_an_overflowing_weight(sd: StableDiffusionPipeline) -> None:
    """Not only validation: `encode` never turns an infinite weight into NaN embeddings."""
    with pytest.raises(WeightError):
        chunks_needed("(cat:" + "9" * 400 + ")", "", sd.tokenizer)
    with pytest.raises(WeightError):
        encode(sd, "sd", "(cat:1000)", "", device="cpu", count=1, cfg=False)


@pytest.mark.parametrize(
    ("text", "plain", "text_only"),
    [
        ("robot", True, "robot"),
        ("(robot:1.0)", True, "robot"),
        ("a (red:1.0) robot, \\(toy\\)", True, "a red robot, (toy)"),
        ("[(a)] b", True, "a b"),
        ("", True, ""),
        ("(robot)", False, "robot"),
        ("[robot]", False, "robot"),
        ("(robot:1.5)", False, "robot"),
        ("a BREAK b", False, "a b"),
    ],
)
def test_is_plain_and_plain_text(text: str, plain: bool, text_only: str) -> None:
    assert is_plain(text) is plain
    assert plain_text(text) == text_only


# --- chunking -------------------------------------------------------------------------------


def test_chunk_counts(sd: StableDiffusionPipeline) -> None:
    tok = sd.tokenizer
    assert len(tok(words(200), add_special_tokens=False).input_ids) == 200
    assert chunks_needed("", "", tok) == 1
    assert chunks_needed(words(CHUNK_TOKENS), "", tok) == 1
    assert chunks_needed(words(CHUNK_TOKENS + 1), "", tok) == 2
    assert chunks_needed(words(200), "", tok) == 3
    assert chunks_needed("robot", words(200), tok) == 3  # the negative counts too
    assert chunks_needed("robot BREAK cat", "", tok) == 2
    assert chunks_needed("robot BREAK", "", tok) == 1  # nothing after the BREAK
    assert chunks_needed(f"{words(CHUNK_TOKENS)} BREAK cat", "", tok) == 2


def test_needs_embeddings(sd: StableDiffusionPipeline) -> None:
    tok = sd.tokenizer
    assert not needs_embeddings("robot", "", tok)
    assert not needs_embeddings("(robot:1.0)", "(blurry:1.0)", tok)
    assert not needs_embeddings(words(CHUNK_TOKENS), "", tok)
    assert needs_embeddings("(robot:1.5)", "", tok)
    assert needs_embeddings("robot", "[blurry]", tok)
    assert needs_embeddings("robot BREAK cat", "", tok)
    assert needs_embeddings(words(CHUNK_TOKENS + 1), "", tok)
    assert needs_embeddings("robot", words(CHUNK_TOKENS + 1), tok)


# --- plain prompts encode as the stock pipeline encodes them --------------------------------


@pytest.mark.parametrize("cfg", [True, False])
@pytest.mark.parametrize("negative", ["", "blurry, ugly"])
@pytest.mark.parametrize("which", ["sd", "sd2"])
def test_plain_prompt_equals_encode_prompt_sd(
    request: pytest.FixtureRequest, which: str, negative: str, cfg: bool
) -> None:
    pipe = request.getfixturevalue(which)
    ours = enc(pipe, "a red robot, in a field", negative, count=2, cfg=cfg)
    cond, uncond = stock(pipe, "a red robot, in a field", negative, count=2, cfg=cfg)
    assert ours.cond.shape == (2, W, 32)
    assert torch.equal(ours.cond, cond)
    if cfg:
        assert ours.uncond is not None
        assert torch.equal(ours.uncond, uncond)
    else:
        assert ours.uncond is None
    assert ours.pooled is None and ours.negative_pooled is None


@pytest.mark.parametrize("cfg", [True, False])
@pytest.mark.parametrize("negative", ["", "blurry, ugly"])
def test_plain_prompt_equals_encode_prompt_sdxl(
    sdxl: StableDiffusionXLPipeline, negative: str, cfg: bool
) -> None:
    ours = enc(sdxl, "a red robot, in a field", negative, count=2, cfg=cfg)
    prompt = "a red robot, in a field"
    cond, uncond, pooled, neg_pooled = stock(sdxl, prompt, negative or None, count=2, cfg=cfg)
    assert ours.cond.shape == (2, W, 64)
    assert torch.equal(ours.cond, cond)
    assert ours.pooled is not None and torch.equal(ours.pooled, pooled)
    if cfg:
        assert ours.uncond is not None and ours.negative_pooled is not None
        assert torch.equal(ours.uncond, uncond)
        assert torch.equal(ours.negative_pooled, neg_pooled)
        assert bool(ours.uncond.abs().sum() == 0) is (negative == "")
    else:
        assert ours.uncond is None and ours.negative_pooled is None


def test_sdxl_negative_of_syntax_only_is_the_empty_one(sdxl: StableDiffusionXLPipeline) -> None:
    ours = enc(sdxl, "robot", "()")
    assert ours.uncond is not None and ours.negative_pooled is not None
    assert ours.uncond.abs().sum() == 0 and ours.negative_pooled.abs().sum() == 0
    sdxl.register_to_config(force_zeros_for_empty_prompt=False)
    try:
        ours = enc(sdxl, "robot", "")
        _, uncond, _, neg_pooled = stock(sdxl, "robot")
    finally:
        sdxl.register_to_config(force_zeros_for_empty_prompt=True)
    assert ours.uncond is not None and ours.uncond.abs().sum() > 0
    assert torch.equal(ours.uncond, uncond)
    assert ours.negative_pooled is not None and torch.equal(ours.negative_pooled, neg_pooled)


# --- weights --------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["sd", "sdxl"])
def test_unit_weights_equal_the_plain_prompt(request: pytest.FixtureRequest, which: str) -> None:
    pipe = request.getfixturevalue(which)
    plain = enc(pipe, "a red robot in a field", "blurry")
    weighted = enc(pipe, "a (red:1.0) [(robot)] in a (field:1.0)", "(blurry:1.0)")
    for ours, theirs in zip(vars(weighted).values(), vars(plain).values(), strict=True):
        assert (ours is None and theirs is None) or torch.equal(ours, theirs)


def emphasized(z: torch.Tensor, weights: list[float]) -> torch.Tensor:
    """A1111's emphasis written out: `z *= weights; z *= original_mean / new_mean`."""
    original_mean = z.mean()
    z = z * torch.tensor(weights)[None, :, None]
    return z * (original_mean / z.mean())


def test_a_weight_scales_its_token_and_restores_the_mean_sd(sd: StableDiffusionPipeline) -> None:
    plain = enc(sd, "a robot").cond
    weighted = enc(sd, "a (robot:1.5)").cond
    assert not torch.allclose(weighted, plain)
    weights = [1.0, 1.0, 1.5] + [1.0] * (W - 3)  # BOS, "a", "robot", EOS and padding
    torch.testing.assert_close(weighted, emphasized(plain, weights))
    torch.testing.assert_close(weighted.mean(), plain.mean())
    # the negative prompt is weighted the same way
    torch.testing.assert_close(enc(sd, "a", "a (robot:1.5)").uncond, weighted)


def test_a_weight_scales_each_sdxl_encoder_alone(sdxl: StableDiffusionXLPipeline) -> None:
    plain = enc(sdxl, "a robot")
    weighted = enc(sdxl, "a [robot]")
    weights = [1.0, 1.0, 1 / 1.1] + [1.0] * (W - 3)
    assert not torch.allclose(weighted.cond, plain.cond)
    for half in (slice(0, 32), slice(32, 64)):  # text_encoder, then text_encoder_2
        expected = emphasized(plain.cond[..., half], weights)
        torch.testing.assert_close(weighted.cond[..., half], expected)
    assert weighted.pooled is not None and plain.pooled is not None
    assert torch.equal(weighted.pooled, plain.pooled)  # the pooled output is not weighted


# --- long prompts ---------------------------------------------------------------------------


def test_a_200_token_prompt_takes_3_chunks_sd(sd: StableDiffusionPipeline) -> None:
    ours = enc(sd, words(200), "blurry", count=2)
    assert ours.cond.shape == (2, 3 * W, 32)
    assert ours.uncond is not None and ours.uncond.shape == (2, 3 * W, 32)
    first, _ = stock(sd, words(75), count=2)
    second, _ = stock(sd, words(75, start=75), count=2)
    third, _ = stock(sd, words(50, start=150), count=2)
    assert torch.equal(ours.cond[:, :W], first)
    assert torch.equal(ours.cond[:, W : 2 * W], second)
    assert torch.equal(ours.cond[:, 2 * W :], third)
    # the one-chunk negative prompt is padded with empty chunks: the encoding of ""
    blurry, empty = stock(sd, "blurry", count=2)
    assert torch.equal(ours.uncond[:, :W], blurry)
    assert torch.equal(ours.uncond[:, W : 2 * W], empty)
    assert torch.equal(ours.uncond[:, 2 * W :], empty)


def test_a_long_negative_prompt_pads_the_prompt(sd: StableDiffusionPipeline) -> None:
    ours = enc(sd, "robot", words(100))
    assert ours.uncond is not None
    assert ours.cond.shape[1] == ours.uncond.shape[1] == 2 * W
    robot, empty = stock(sd, "robot")
    assert torch.equal(ours.cond[:, :W], robot)
    assert torch.equal(ours.cond[:, W:], empty)
    # without guidance the negative prompt is ignored, as the stock pipeline ignores it
    alone = enc(sd, "robot", words(100), cfg=False)
    assert alone.uncond is None and torch.equal(alone.cond, robot)
    # min_chunks gives prompts of different lengths one length
    assert enc(sd, "robot", min_chunks=3).cond.shape[1] == 3 * W


def test_a_200_token_prompt_takes_3_chunks_sdxl(sdxl: StableDiffusionXLPipeline) -> None:
    ours = enc(sdxl, words(200), "blurry")
    assert ours.cond.shape == (1, 3 * W, 64)
    assert ours.uncond is not None and ours.uncond.shape == (1, 3 * W, 64)
    first, _, pooled, _ = stock(sdxl, words(75), cfg=False)
    blurry, _, blurry_pooled, _ = stock(sdxl, "blurry", cfg=False)
    empty, *_ = stock(sdxl, "", cfg=False)
    assert torch.equal(ours.cond[:, :W], first)
    assert torch.equal(ours.pooled, pooled)  # from the first chunk
    assert torch.equal(ours.uncond[:, :W], blurry)
    assert torch.equal(ours.uncond[:, W:], torch.cat([empty, empty], dim=1))
    assert torch.equal(ours.negative_pooled, blurry_pooled)


def test_break_starts_a_new_chunk(sd: StableDiffusionPipeline) -> None:
    ours = enc(sd, "a robot BREAK a cat").cond
    assert ours.shape[1] == 2 * W
    assert torch.equal(ours[:, :W], stock(sd, "a robot")[0])
    assert torch.equal(ours[:, W:], stock(sd, "a cat")[0])


def test_comma_backtrack_moves_the_last_phrase_to_the_next_chunk(
    sd: StableDiffusionPipeline,
) -> None:
    # 70 words, a comma (token 71), 10 words: the chunk is full at the 76th token, and its last
    # comma is 5 tokens from its end (within 20), so the chunk ends after the comma.
    head, tail = words(70) + ",", words(10, start=70)
    ours = enc(sd, f"{head} {tail}").cond
    assert torch.equal(ours[:, :W], stock(sd, head)[0])
    assert torch.equal(ours[:, W:], stock(sd, tail)[0])
    # a comma further back than 20 tokens is not used: the chunk holds the first 75 tokens
    head, tail = words(50) + ",", words(30, start=50)
    ours = enc(sd, f"{head} {tail}").cond
    assert torch.equal(ours[:, :W], stock(sd, f"{head} {words(24, start=50)}")[0])
    assert torch.equal(ours[:, W:], stock(sd, words(6, start=74))[0])


# --- images ---------------------------------------------------------------------------------


def render(pipe: Any, **kw: Any) -> np.ndarray:
    common: dict[str, Any] = {
        "num_inference_steps": 2,
        "guidance_scale": 7.0,
        "width": 64,
        "height": 64,
        "generator": torch.Generator("cpu").manual_seed(1),
        "output_type": "np",
    }
    with torch.inference_mode():
        return pipe(**common, **kw).images


def from_embeddings(pipe: Any, e: Embeddings) -> np.ndarray:
    kw: dict[str, Any] = {"prompt_embeds": e.cond, "negative_prompt_embeds": e.uncond}
    if e.pooled is not None:
        kw |= {"pooled_prompt_embeds": e.pooled, "negative_pooled_prompt_embeds": e.negative_pooled}
    return render(pipe, **kw)


def test_images_sd(sd: StableDiffusionPipeline) -> None:
    stock = render(sd, prompt="robot")
    assert np.array_equal(from_embeddings(sd, enc(sd, "(robot:1.0)")), stock)
    assert not np.array_equal(from_embeddings(sd, enc(sd, "(robot:1.5)")), stock)
    # three chunks go through the stock UNet's cross-attention as they are
    assert from_embeddings(sd, enc(sd, words(200), "blurry")).shape == (1, 64, 64, 3)


def test_images_sdxl(sdxl: StableDiffusionXLPipeline) -> None:
    stock = render(sdxl, prompt="robot")
    assert np.array_equal(from_embeddings(sdxl, enc(sdxl, "(robot:1.0)")), stock)
    assert not np.array_equal(from_embeddings(sdxl, enc(sdxl, "(robot:1.5)")), stock)


# --- what the engine accepts: bounded weights and windows ------------------------------------


async def test_check_refuses_overflowing_weights_and_too_many_windows(
    make_engine: EngineFactory,
) -> None:
    """On the real tiny model: a weight past the bound or more than `max_prompt_chunks`
    windows is refused before anything is queued, naming the field; the limit itself is fine."""
    engine = await make_engine(max_prompt_chunks=3)
    with pytest.raises(InvalidRequest, match="'cat' weighs 1e\\+60") as info:
        await engine.check(ImageRequest("a (cat:" + "9" * 60 + ")"))
    assert info.value.field == "prompt"
    with pytest.raises(InvalidRequest, match="in the negative prompt") as info:
        await engine.check(ImageRequest("a cat", negative_prompt="(blurry:-50)"))
    assert info.value.field == "negative_prompt"
    resolved = (await engine.check(ImageRequest("a BREAK b BREAK c"))).request
    assert resolved.chunks == 3
    with pytest.raises(InvalidRequest, match="it takes 4 windows of 75 tokens") as info:
        await engine.check(ImageRequest("a BREAK b BREAK c BREAK d"))
    assert "at most 3" in str(info.value) and info.value.field == "prompt"
    with pytest.raises(InvalidRequest, match="it takes 4 windows"):  # the negative counts too
        await engine.check(ImageRequest("a", negative_prompt="a BREAK b BREAK c BREAK d"))
    assert engine.queue_depth == 0


def test_max_prompt_chunks_is_at_least_one() -> None:
    with pytest.raises(ValueError, match="max_prompt_chunks must be at least 1"):
        EngineConfig(max_prompt_chunks=0)
    assert EngineConfig().limits.max_prompt_chunks == 6
