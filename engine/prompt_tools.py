"""Prompt shorthands users type every day, as Midjourney has them: permutations
(`a {red, blue} car` is two prompts) and `--no word` (added to the negative prompt).

Pure functions, no torch: the front end expands a prompt into its variants before making one
job per variant.

Permutations. A group `{a, b, c}` stands for each of its comma-separated options in turn;
several groups give every combination, the first group varying slowest (`{a, b} {x, y}`:
a x, a y, b x, b y). Groups nest (`a {bird, {red, blue} car}`: a bird, a red car, a blue
car), an option may be empty (`a {big, } dog`: a big dog, a dog), whitespace is collapsed,
and a variant that comes out twice is kept once, at its first place. Braces holding no comma
at their own level (`{masterpiece}`, as NovelAI prompts write emphasis) are not a group:
they stay as typed. A `{` without its `}` (or the reverse), braces nested deeper than
`MAX_NESTING`, and more variants than the caller's maximum are refused in one line; the
variants are counted before any is made (`{a,b}` thirty times is a billion prompts, never
built).

`--no`. `--no plants, people` (or `—no`, as phones autocorrect the two dashes) anywhere in
the prompt, up to the next `--` option or the end, is taken out of it and added to the
negative prompt, comma-separated; where the model reads no negative prompt it is left out
with a note instead.
"""

from __future__ import annotations

import itertools
import math
import re

from .errors import InvalidRequest

__all__ = [
    "DEFAULT_MAX_VARIANTS",
    "MAX_NESTING",
    "apply_no",
    "count_variants",
    "expand_permutations",
]

#: Variants one prompt may expand to when the caller configures no other maximum.
DEFAULT_MAX_VARIANTS = 10
#: Braces within braces, at most.
MAX_NESTING = 8

# `--no` (or an em or en dash) and what follows, up to the next ` --option` or the end.
_NO = re.compile(r"(?:^|\s)(?:--|—|–)no\b(.*?)(?=\s(?:--|—|–)[A-Za-z]|$)", re.DOTALL)

# A parsed prompt: literal text, and groups (each a list of options, each a parsed prompt).
Part = str | list[list["Part"]]


def _sequence(text: str, i: int, depth: int) -> tuple[list[Part], int]:
    """Parts from `text[i:]` up to the end, or inside a group up to its `,` or `}`; and the
    index where it stopped."""
    parts: list[Part] = []
    start = i
    while i < len(text):
        ch = text[i]
        if ch == "{":
            parts.append(text[start:i])
            options, i = _group(text, i + 1, depth + 1)
            if len(options) > 1:
                parts.append(options)
            else:  # no comma: not a group, the braces stay as typed
                parts += ["{", *options[0], "}"]
            start = i
            continue
        if depth and ch in ",}":
            break
        if ch == "}":
            raise InvalidRequest("prompt", "The prompt has a } without its {.")
        i += 1
    parts.append(text[start:i])
    return [p for p in parts if p != ""], i


def _group(text: str, i: int, depth: int) -> tuple[list[list[Part]], int]:
    """The options of the group whose `{` is just before `text[i]`, and the index after its
    `}`."""
    if depth > MAX_NESTING:
        raise InvalidRequest("prompt", f"Braces nest at most {MAX_NESTING} deep in a prompt.")
    options = []
    while True:
        option, i = _sequence(text, i, depth)
        options.append(option)
        if i >= len(text):
            raise InvalidRequest("prompt", "The prompt has a { without its }.")
        if text[i] == "}":
            return options, i + 1
        i += 1  # past the comma


def _count(parts: list[Part]) -> int:
    return math.prod(1 if isinstance(p, str) else sum(map(_count, p)) for p in parts)


def _expand(parts: list[Part]) -> list[str]:
    choices = [[p] if isinstance(p, str) else [s for o in p for s in _expand(o)] for p in parts]
    return ["".join(combination) for combination in itertools.product(*choices)]


def count_variants(prompt: str) -> int:
    """How many prompts `prompt` stands for (before repeats are dropped); `InvalidRequest`
    for unbalanced or too deeply nested braces."""
    return _count(_sequence(prompt, 0, 0)[0])


def expand_permutations(prompt: str, *, limit: int = DEFAULT_MAX_VARIANTS) -> list[str]:
    """The prompts `prompt` stands for, in order (one, itself with whitespace collapsed, when
    it has no group); `InvalidRequest` in one line for unbalanced braces or more than `limit`
    variants (see the module doc)."""
    parts = _sequence(prompt, 0, 0)[0]
    count = _count(parts)
    if count > limit:
        raise InvalidRequest(
            "prompt",
            f"The prompt's {{...}} choices make {count:,} prompts; at most {limit} are allowed.",
        )
    variants = (" ".join(text.split()) for text in _expand(parts))
    return list(dict.fromkeys(variants))


def apply_no(prompt: str, negative: str, *, reads_negative: bool) -> tuple[str, str, list[str]]:
    """`prompt` without its `--no ...` parts, `negative` with their words added, and notes for
    the requester (the words left out on a model that reads no negative prompt)."""
    found = [m.group(1).strip(" ,") for m in _NO.finditer(prompt)]
    if not found:
        return prompt, negative, []
    rest = " ".join(_NO.sub(" ", prompt).split())
    words = ", ".join(w for w in found if w)
    if not words:
        return rest, negative, []
    if not reads_negative:
        return (
            rest,
            negative,
            [f"This model reads no negative prompt, so --no {words} was left out."],
        )
    return rest, ", ".join(filter(None, (negative.strip(), words))), []
