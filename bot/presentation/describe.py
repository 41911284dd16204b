"""`/describe`'s answer: four numbered prompts with an **Imagine** button each.

The message is its own memory: a button's custom id carries only the prompt's number and the
picture's aspect ratio (`imagine-describe:<n>:<w>:<h>`), and a press reads the prompt back
from the message's own lines (`prompts_of`), so no view has to survive a restart and the
prompt imagined is the one the member read. The Discord surface (`surface/cogs/describe.py`)
answers a press.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from engine import ASPECT_RATIOS

__all__ = [
    "BUTTON_ID",
    "MAX_SHOWN",
    "closest_ratio",
    "describe_text",
    "prompts_of",
    "shown",
]

#: A button's custom id: the prompt's number (1-4) and the aspect ratio to imagine it at.
BUTTON_ID = r"imagine-describe:(?P<number>[1-9]):(?P<ratio>[0-9]{1,3}:[0-9]{1,3})"
#: Characters a prompt is shown with at most (four fit in Discord's 2000 per message).
MAX_SHOWN = 450

_LINE = re.compile(r"^\*\*(?P<number>[1-9])\.\*\* (?P<prompt>.+)$", re.MULTILINE)


def closest_ratio(width: int, height: int) -> str:
    """The one of the engine's `ASPECT_RATIOS` nearest `width` x `height` (on a log scale,
    so 2:1 and 1:2 are as far from 1:1)."""
    aspect = math.log(width / height)

    def distance(ratio: str) -> float:
        w, h = ratio.split(":")
        return abs(math.log(int(w) / int(h)) - aspect)

    return min(ASPECT_RATIOS, key=distance)


def shown(prompt: str) -> str:
    """`prompt` on one line, cut to `MAX_SHOWN` characters after its last whole part: a tag
    list (or a clause) at a comma in the second half, else at a word, so a tag such as
    "long hair" is never shown, and imagined, as "long"."""
    text = " ".join(prompt.split())
    if len(text) <= MAX_SHOWN:
        return text
    cut = text[: MAX_SHOWN + 1]
    comma = cut.rfind(", ")
    end = comma if comma > MAX_SHOWN // 2 else cut.rfind(" ")
    return cut[: end if end > 0 else MAX_SHOWN].rstrip(" ,.;")


def describe_text(filename: str, prompts: Sequence[str], ratio: str) -> str:
    """The answer: the prompts numbered, one a line (`prompts_of` reads them back)."""
    name = " ".join(filename.split())[:80]
    lines = [f"Prompts for {name} (Imagine makes them at {ratio}):"]
    lines += [f"**{n}.** {shown(p)}" for n, p in enumerate(prompts, start=1)]
    return "\n".join(lines)


def prompts_of(content: str) -> dict[int, str]:
    """The numbered prompts of a `/describe` answer, by number."""
    return {int(m["number"]): m["prompt"].strip() for m in _LINE.finditer(content)}
