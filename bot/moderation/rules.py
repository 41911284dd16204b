"""Server rules for `/imagine`: where it works, what it refuses, what it always adds, and
what happens to images the safety checker flags. Pure: no Discord calls, easy to test.

Flagged images under `flagged_images = "refuse_outside_nsfw"` outside an NSFW channel are
withheld (never uploaded) and **only those images** are given back to the user's quota: the
job counts the images it delivered. If every image is withheld the job is marked failed,
which gives the whole job back.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from engine import GeneratedImage, model_text

from ..config import ModerationSettings

__all__ = ["Moderation", "Verdict", "folded"]


def folded(text: str) -> str:
    """`text` compared case- and accent-insensitively: compatibility forms unfolded
    (full-width letters, ligatures), accents dropped, case folded."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to post of a finished job: `(image, as_spoiler)` pairs, and how many were held."""

    post: tuple[tuple[GeneratedImage, bool], ...]
    withheld: int

    @property
    def nothing_to_post(self) -> bool:
        return not self.post


class Moderation:
    """The `[moderation]` rules applied to one request or result."""

    def __init__(self, settings: ModerationSettings) -> None:
        self.settings = settings
        # Each blocked word as compared, and as configured (what the refusal names).
        self._words = {folded(w.strip()): w.strip() for w in settings.blocked_words if w.strip()}
        # Whole words only: "ass" must not refuse "class".
        self._blocked = (
            re.compile(r"(?<!\w)(" + "|".join(map(re.escape, self._words)) + r")(?!\w)")
            if self._words
            else None
        )

    def channel_allowed(self, channel_id: int, parent_id: int | None = None) -> bool:
        """Allowed channels also allow their threads (a thread's parent is listed)."""
        allowed = self.settings.allowed_channel_ids
        if not allowed or channel_id in allowed:
            return True
        return parent_id is not None and parent_id in allowed

    def blocked_word(self, prompt: str, negative: str = "") -> str | None:
        """The first blocked word in the prompt or the negative prompt, or None.

        Both are read as the model reads them (`engine.model_text`: invisible characters,
        LoRA tags and weighting syntax gone), case- and accent-insensitively, so `nu()de`,
        a zero-width space inside the word or `NÜDE` do not slip through. The forced
        negative prompt is not the member's text: it is left out of the check.
        """
        if self._blocked is None:
            return None
        for text in (prompt, self._without_forced(negative)):
            found = self._blocked.search(folded(model_text(text)))
            if found:
                return self._words[found.group(1)]
        return None

    def _without_forced(self, negative: str) -> str:
        forced = self.settings.forced_negative_prompt.strip()
        if not forced:
            return negative
        return re.sub(re.escape(forced), " ", negative, flags=re.IGNORECASE)

    def negative_prompt(self, negative: str) -> str:
        """The user's negative prompt plus the forced one (added once, even on a reroll)."""
        forced = self.settings.forced_negative_prompt.strip()
        negative = negative.strip()
        if not forced or forced.casefold() in negative.casefold():
            return negative
        return f"{negative}, {forced}" if negative else forced

    def review(self, images: Sequence[GeneratedImage], *, nsfw_channel: bool) -> Verdict:
        """Apply `flagged_images` to a finished job's images."""
        spoiler = self.settings.flagged_images == "spoiler"
        post: list[tuple[GeneratedImage, bool]] = []
        withheld = 0
        for image in images:
            if not image.flagged:
                post.append((image, False))
            elif spoiler:
                post.append((image, True))
            elif nsfw_channel:
                post.append((image, False))
            else:
                withheld += 1
        return Verdict(tuple(post), withheld)
