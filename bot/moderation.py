"""Server rules for `/imagine`: where it works, what it refuses, what it always adds, and
what happens to images the safety checker flags. Pure: no Discord calls, easy to test.

Flagged images under `flagged_images = "refuse_outside_nsfw"` outside an NSFW channel are
withheld (never uploaded) and **only those images** are given back to the user's quota: the
job counts the images it delivered. If every image is withheld the job is marked failed,
which gives the whole job back.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from engine import GeneratedImage

from .config import ModerationSettings

__all__ = ["Moderation", "Verdict"]


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
        words = [w.strip() for w in settings.blocked_words if w.strip()]
        # Whole words only, case-insensitive: "ass" must not refuse "class".
        self._blocked = (
            re.compile(
                r"(?<!\w)(" + "|".join(re.escape(w) for w in words) + r")(?!\w)",
                re.IGNORECASE,
            )
            if words
            else None
        )

    def channel_allowed(self, channel_id: int, parent_id: int | None = None) -> bool:
        """Allowed channels also allow their threads (a thread's parent is listed)."""
        allowed = self.settings.allowed_channel_ids
        if not allowed or channel_id in allowed:
            return True
        return parent_id is not None and parent_id in allowed

    def blocked_word(self, *texts: str) -> str | None:
        """The first blocked word found in any of `texts`, or None."""
        if self._blocked is None:
            return None
        for text in texts:
            found = self._blocked.search(text)
            if found:
                return found.group(1)
        return None

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
