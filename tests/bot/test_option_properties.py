"""Hostile `/imagine` input, in process, over the pure path a request takes in `jobs.py`:

    moderation (negative prompt, blocked words) → `jobs.convert.engine_request` → the engine's
    `validate` (what `Engine.prepare` runs before anything is queued) → the echo in `render`.

Whatever a user types (control characters, null bytes, zero-width and bidi characters, 10 000
characters, markdown, `@everyone` and mentions, absurd numbers), each request either becomes
a clean, in-range engine request or a clear user message; nothing crashes, and nothing
echoed back can ping anyone but the requester.
"""

from __future__ import annotations

import math
import re
import unicodedata
from types import SimpleNamespace
from typing import Any

import discord
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot import render
from bot.config import ModerationSettings
from bot.errors import describe
from bot.jobs.convert import engine_request
from bot.moderation import Moderation, Verdict
from bot.options import ImagineOptions
from engine import (
    MAX_SEED,
    GeneratedImage,
    GenerationResult,
    ImageRequest,
    InvalidRequest,
    Limits,
    ModelProfile,
)
from engine.request import MAX_PROMPT_CHARS, validate
from engine.sizing import Shape, parse_shape

LIMITS = Limits(max_width=768, max_height=768, min_size=64, max_steps=50, max_count=4)
PROFILE = ModelProfile(
    name="test", family="sd", native_size=512, default_steps=25, default_guidance=7.0, sampler="x"
)
MODERATION = Moderation(
    ModerationSettings(blocked_words=("forbidden",), forced_negative_prompt="blurry")
)
REQUESTER = 1234
USER_MENTION = re.compile(r"<@!?(\d+)>")
ROLE_MENTION = re.compile(r"<@&(\d+)>")

NASTY = [
    "\x00", "\x07", "\x1b[31m", "\u200b", "\u200d", "\ufeff", "\u202e", "\u2066", "\u061c",
    "\r\n", "\t", "@everyone", "@here", "<@&42>", "<@99>", "<@!99>", "<#7>", "**", "__", "`",
    "```", "||", "> ", "# ", "[x](https://e.x)", "\\", "\U0001f600", "\ud7ff", "é", "\u0301",
]  # fmt: skip

texts = st.one_of(
    st.text(max_size=300),
    st.lists(st.sampled_from(NASTY) | st.text(max_size=5), max_size=40).map("".join),
    st.integers(0, 12_000).map(lambda n: "a" * n),
    st.just("a" * 10_000 + "@everyone"),
)
numbers = st.none() | st.integers(-(2**70), 2**70)
floats = st.none() | st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**9), 10**9)
options = st.builds(
    ImagineOptions,
    prompt=texts,
    negative=texts,
    seed=numbers,
    steps=numbers,
    guidance=floats,
    shape=st.none() | st.sampled_from(Shape),
    count=st.integers(-(2**40), 2**40),
)


def admit(asked: ImagineOptions) -> tuple[ImageRequest, tuple[str, ...]] | str:
    """The request the engine would queue, or the text the user would read."""
    request = engine_request(asked, negative=MODERATION.negative_prompt(asked.negative), user="1:2")
    if MODERATION.blocked_word(asked.prompt, asked.negative) is not None:
        return "blocked"
    try:
        resolved, warnings = validate(request, LIMITS, PROFILE, lambda text: len(text.split()))
    except InvalidRequest as exc:
        return describe(exc).text
    return resolved, tuple(warnings)


def invisible(ch: str) -> bool:
    return unicodedata.category(ch) in {"Cc", "Cf", "Cs", "Co", "Cn"}


def pinged(content: str, allowed: discord.AllowedMentions) -> tuple[set[int], set[int], bool]:
    """Who Discord notifies for `content` sent with `allowed` (its documented rules)."""
    rules: dict[str, Any] = allowed.to_dict()
    parse = set(rules.get("parse", []))
    users = {int(u) for u in USER_MENTION.findall(content)}
    roles = {int(r) for r in ROLE_MENTION.findall(content)}
    if "users" not in parse:
        users &= {int(u) for u in rules.get("users", [])}
    if "roles" not in parse:
        roles &= {int(r) for r in rules.get("roles", [])}
    everyone = ("@everyone" in content or "@here" in content) and "everyone" in parse
    return users, roles, everyone


@settings(max_examples=400, deadline=None)
@given(options)
def test_every_request_is_clean_and_in_range_or_clearly_refused(asked: ImagineOptions) -> None:
    outcome = admit(asked)
    if isinstance(outcome, str):
        message = outcome
        assert message and len(message) <= 2000 and "\n" not in message
        assert "Traceback" not in message and "error `" not in message  # expected, not a bug
        return
    request, warnings = outcome
    assert request.prompt and len(request.prompt) <= MAX_PROMPT_CHARS
    for text in (request.prompt, request.negative_prompt):
        assert not any(invisible(ch) for ch in text), ascii(text)
        assert text == text.strip() and "  " not in text
    assert "blurry" in request.negative_prompt  # the forced negative is always there
    assert request.seed is not None and 0 <= request.seed <= MAX_SEED
    assert request.steps is not None and 1 <= request.steps <= LIMITS.max_steps
    assert 1 <= request.count <= LIMITS.max_count
    assert request.guidance is not None and math.isfinite(request.guidance)
    assert 0 <= request.guidance <= LIMITS.max_guidance
    for side, high in ((request.width, LIMITS.max_width), (request.height, LIMITS.max_height)):
        assert side is not None and side % 8 == 0 and LIMITS.min_size <= side <= high
    assert all(w and len(w) < 300 for w in warnings)


@settings(max_examples=200, deadline=None)
@given(asked=options, mentioned=st.integers(1, 2**63))
def test_echoed_text_never_pings_anyone_but_the_requester(
    asked: ImagineOptions, mentioned: int
) -> None:
    outcome = admit(asked)
    if isinstance(outcome, str):
        # Refusals are ephemeral and sent with the bot's default of no mentions at all.
        assert pinged(outcome, discord.AllowedMentions.none()) == (set(), set(), False)
        return
    request, warnings = outcome
    image = GeneratedImage(png=b"", seed=request.seed or 0, index=0, width=64, height=64)
    result = GenerationResult(request=request, images=(image,), model="m", sampler="s")
    job: Any = SimpleNamespace(
        id=7, reroll_of=None, kind="imagine", source_job_id=None, source_index=None, strength=None
    )
    embed = render.result_embed(job, result, Verdict(((image, False),), 0))
    content = render.result_content(REQUESTER, 1, 0, warnings)
    # What `targets.py` sends the result with: only the requester may be pinged.
    allowed = discord.AllowedMentions(
        everyone=False, roles=False, users=[discord.Object(REQUESTER)], replied_user=False
    )
    users, roles, everyone = pinged(content + f" <@{mentioned}> <@&{mentioned}>", allowed)
    assert users <= {REQUESTER} and not roles and not everyone
    assert content.startswith(f"<@{REQUESTER}>") and len(content) <= 2000
    # The prompt is echoed only in the embed (embeds never ping), cut to Discord's limits.
    assert embed.title is not None and len(embed.title) <= 256
    assert request.prompt.startswith(embed.title.rstrip("…"))
    assert all(len(f.value or "") <= 1024 for f in embed.fields)


@given(st.text(max_size=200))
def test_any_size_but_the_choices_is_refused_clearly(size: str) -> None:
    """Discord offers three choices; a forged value reaches the cog and must not crash it."""
    if size in {s.value for s in Shape}:
        assert parse_shape(size) is Shape(size)
        return
    if not size:
        assert parse_shape(size) is None  # no size: the model's native square
        return
    with pytest.raises(InvalidRequest) as info:
        parse_shape(size)
    message = describe(info.value).text
    assert "not a valid size" in message and "square, portrait, landscape" in message
    assert len(message) < 200 and info.value.__cause__ is None
