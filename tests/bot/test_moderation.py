"""The `[moderation]` rules, as pure functions of the settings."""

from __future__ import annotations

from bot.config import ModerationSettings
from bot.moderation.rules import Moderation
from engine import GeneratedImage


def image(seed: int, flagged: bool) -> GeneratedImage:
    return GeneratedImage(png=b"", seed=seed, index=seed, width=64, height=64, flagged=flagged)


def test_blocked_words_match_whole_words_in_any_case() -> None:
    rules = Moderation(ModerationSettings(blocked_words=("ass", "gore ", "X-ray")))
    assert rules.blocked_word("a glass of water", "classic") is None
    assert rules.blocked_word("a kick-ASS robot") == "ass"  # named as the server wrote it
    assert rules.blocked_word("fine", "no GORE please") == "gore"
    assert rules.blocked_word("an x-RAY of a cat") == "X-ray"
    assert Moderation(ModerationSettings()).blocked_word("anything") is None


def test_blocked_words_are_found_in_the_text_the_model_reads() -> None:
    """What the engine strips after the check (invisible characters, LoRA tags, weighting
    syntax) cannot hide a word, nor can accents, full-width letters or case."""
    rules = Moderation(ModerationSettings(blocked_words=("nude",)))
    for hidden in (
        "a nu\u200bde statue",  # zero-width space
        "a nu\u00adde statue",  # soft hyphen
        "a nu\u2060de statue",  # word joiner
        "a nu()de statue",
        "a nu[]de statue",
        "a nu\\de statue",  # a lone backslash
        "a (nude:1.4) statue",
        "a NÜDE statue",
        "a \uff4e\uff55\uff44\uff45 statue",  # full-width letters
        "a nu()de (x:1.2.3) statue",  # with syntax the parser refuses
        "a nude-coloured wall BREAK x",
    ):
        assert rules.blocked_word(hidden) == "nude", hidden
    assert rules.blocked_word("fine", "no nu()de") == "nude"
    assert rules.blocked_word("a nudelholz", "denuded") is None  # still whole words only
    accented = Moderation(ModerationSettings(blocked_words=("Crème",)))
    assert accented.blocked_word("CREME brulee") == "Crème"


def test_the_forced_negative_prompt_is_not_checked_for_blocked_words() -> None:
    """A server may block a word and force it into every negative prompt: a reroll, whose
    negative prompt carries the forced one, is not refused for it."""
    rules = Moderation(ModerationSettings(blocked_words=("nude",), forced_negative_prompt="Nude"))
    negative = rules.negative_prompt("blurry")
    assert negative == "blurry, Nude" and rules.blocked_word("a cat", negative) is None


def test_channels_allow_listed_ones_and_their_threads() -> None:
    assert Moderation(ModerationSettings()).channel_allowed(5)
    rules = Moderation(ModerationSettings(allowed_channel_ids=(1, 2)))
    assert rules.channel_allowed(2) and not rules.channel_allowed(3)
    assert rules.channel_allowed(3, parent_id=1)  # a thread in an allowed channel


def test_the_forced_negative_prompt_is_added_once() -> None:
    rules = Moderation(ModerationSettings(forced_negative_prompt="nsfw, gore"))
    assert rules.negative_prompt("") == "nsfw, gore"
    assert rules.negative_prompt(" blurry ") == "blurry, nsfw, gore"
    assert rules.negative_prompt("blurry, NSFW, gore") == "blurry, NSFW, gore"  # a reroll
    assert Moderation(ModerationSettings()).negative_prompt("blurry") == "blurry"


def test_flagged_images_become_spoilers_or_are_withheld_outside_nsfw() -> None:
    images = [image(1, False), image(2, True)]
    spoiler = Moderation(ModerationSettings(flagged_images="spoiler"))
    assert [(i.seed, s) for i, s in spoiler.review(images, nsfw_channel=False).post] == [
        (1, False),
        (2, True),
    ]
    refuse = Moderation(ModerationSettings(flagged_images="refuse_outside_nsfw"))
    outside = refuse.review(images, nsfw_channel=False)
    assert [i.seed for i, _ in outside.post] == [1] and outside.withheld == 1
    inside = refuse.review(images, nsfw_channel=True)
    assert [(i.seed, s) for i, s in inside.post] == [(1, False), (2, False)]
    assert refuse.review([image(3, True)], nsfw_channel=False).nothing_to_post
