"""Permutations and `--no`: pure functions, checked by example and by property."""

from __future__ import annotations

import itertools
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine import InvalidRequest
from engine.prompt_tools import MAX_NESTING, apply_no, count_variants, expand_permutations

WORD = st.text(alphabet="abcdefghij", min_size=1, max_size=6)


@pytest.mark.parametrize(
    ("prompt", "variants"),
    [
        ("a red car", ["a red car"]),
        ("a {red, blue} car", ["a red car", "a blue car"]),
        ("{a, b} {x, y}", ["a x", "a y", "b x", "b y"]),  # the first group varies slowest
        ("a {bird, {red, blue} car}", ["a bird", "a red car", "a blue car"]),
        ("a {big, } dog", ["a big dog", "a dog"]),
        ("a {red, red, blue} car", ["a red car", "a blue car"]),  # once each
        ("{masterpiece}, a {cat, dog}", ["{masterpiece}, a cat", "{masterpiece}, a dog"]),
        ("{{very} {old, new}}", ["{{very} old}", "{{very} new}"]),  # outer: no comma
        ("a  {(red:1.2) ,  [blue]}   car", ["a (red:1.2) car", "a [blue] car"]),
    ],
)
def test_permutations_expand_as_midjourney_does(prompt: str, variants: list[str]) -> None:
    assert expand_permutations(prompt) == variants


@pytest.mark.parametrize(
    ("prompt", "words"),
    [
        ("a {red, blue car", "{ without its }"),
        ("a red} car", "} without its {"),
        ("{a,b}" * 3, "make 8 prompts; at most 4"),
        ("{" * (MAX_NESTING + 1) + "a,b" + "}" * (MAX_NESTING + 1), "nest at most"),
    ],
)
def test_bad_permutations_are_refused_in_one_line(prompt: str, words: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        expand_permutations(prompt, limit=4)
    assert refused.value.field == "prompt" and words in str(refused.value)
    assert "\n" not in str(refused.value)


def test_a_billion_variants_are_counted_not_built() -> None:
    prompt = "{a, b} " * 30
    started = time.perf_counter()
    assert count_variants(prompt) == 2**30
    with pytest.raises(InvalidRequest, match="1,073,741,824 prompts"):
        expand_permutations(prompt, limit=10)
    assert time.perf_counter() - started < 1.0


@given(
    prefix=WORD,
    groups=st.lists(st.lists(WORD, min_size=2, max_size=4, unique=True), min_size=1, max_size=3),
)
def test_every_combination_comes_once_in_order(prefix: str, groups: list[list[str]]) -> None:
    prompt = prefix + "".join(" {" + ", ".join(g) + "}" for g in groups)
    expected = [" ".join((prefix, *combo)) for combo in itertools.product(*groups)]
    expected = list(dict.fromkeys(expected))
    count = count_variants(prompt)
    assert count == len(list(itertools.product(*groups)))
    assert expand_permutations(prompt, limit=count) == expected


@given(text=st.text(alphabet="ab ,{}", max_size=30))
def test_any_text_expands_or_is_refused_cleanly(text: str) -> None:
    try:
        variants = expand_permutations(text, limit=10_000)
    except InvalidRequest as exc:
        assert exc.field == "prompt"
    else:
        assert 1 <= len(variants) <= count_variants(text)
        assert len(set(variants)) == len(variants)


@pytest.mark.parametrize(
    ("prompt", "negative", "out", "out_negative"),
    [
        ("a garden --no plants", "", "a garden", "plants"),
        ("a garden --no plants, people", "blurry", "a garden", "blurry, plants, people"),
        ("a garden —no plants --ar 16:9", "", "a garden --ar 16:9", "plants"),  # an em dash
        ("--no cats a dog", "", "", "cats a dog"),
        ("a noisy --noise garden", "", "a noisy --noise garden", ""),  # not `--no`
        ("a garden --no", "x", "a garden", "x"),
    ],
)
def test_no_goes_to_the_negative_prompt(
    prompt: str, negative: str, out: str, out_negative: str
) -> None:
    assert apply_no(prompt, negative, reads_negative=True) == (out, out_negative, [])


def test_no_on_a_model_without_a_negative_prompt_is_left_out_with_a_note() -> None:
    prompt, negative, notes = apply_no("a garden --no plants", "", reads_negative=False)
    assert (prompt, negative) == ("a garden", "")
    assert notes == ["This model reads no negative prompt, so --no plants was left out."]
