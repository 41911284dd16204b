"""What a caller asks for, and the checks that run before anything is queued.

Pure Python (no torch): the schedulers and the front end import it freely.
"""

from __future__ import annotations

import secrets
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from .config import Limits
from .errors import InvalidRequest

__all__ = [
    "MAX_PROMPT_CHARS",
    "MAX_SEED",
    "BatchKey",
    "ImageRequest",
    "ModelProfile",
    "clean_text",
    "validate",
]

MAX_SEED = 2**32 - 1
#: Far above any tokenizer limit; keeps a 10 000-character paste from being tokenized at all.
MAX_PROMPT_CHARS = 2000


@dataclass(frozen=True, slots=True)
class ImageRequest:
    """One user's ask. `None` fields take the model's defaults when the engine accepts it.

    `count` images are made from seeds `seed`, `seed + 1`, ...; `user` is the fairness key
    (requests are interleaved between users, never between one user's own requests).
    """

    prompt: str
    negative_prompt: str = ""
    seed: int | None = None
    steps: int | None = None
    guidance: float | None = None
    width: int | None = None
    height: int | None = None
    count: int = 1
    user: str = ""

    @property
    def key(self) -> BatchKey:
        """What must match for two requests to share one pipeline call."""
        assert self.width is not None and self.height is not None and self.steps is not None
        assert self.guidance is not None
        return BatchKey(self.width, self.height, self.steps, float(self.guidance))

    @property
    def seeds(self) -> list[int]:
        """One seed per image, wrapping at 2**32 like other SD tools."""
        assert self.seed is not None
        return [(self.seed + i) % (MAX_SEED + 1) for i in range(self.count)]


@dataclass(frozen=True, slots=True)
class BatchKey:
    """Parameters a diffusers pipeline call cannot vary between its items."""

    width: int
    height: int
    steps: int
    guidance: float


@dataclass(frozen=True, slots=True)
class ModelProfile:
    """What the loaded model considers normal, so a bare prompt gets sensible settings."""

    name: str
    family: str  # "sd", "sdxl", "other"
    native_size: int
    default_steps: int
    default_guidance: float
    sampler: str  # human name of the scheduler, as written in PNG metadata
    max_tokens: int = 75  # tokens a prompt may use, BOS/EOS excluded
    has_safety_checker: bool = False
    extra: dict[str, str] = field(default_factory=dict)


def clean_text(text: str) -> str:
    """Drop control and invisible formatting characters and collapse whitespace.

    Null bytes, zero-width and bidi-override characters carry no meaning for a text encoder
    and only make logs and Discord captions confusing.
    """
    kept = []
    for ch in text:
        cat = unicodedata.category(ch)
        if ch in "\n\t\r":
            kept.append(" ")
        elif cat in {"Cc", "Cf", "Cs", "Co", "Cn"}:
            continue
        else:
            kept.append(ch)
    return " ".join("".join(kept).split())


def _int_in(name: str, value: object, low: int, high: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(name, f"{what} must be a whole number, not {value!r}.")
    if not low <= value <= high:
        raise InvalidRequest(name, f"{what} must be between {low} and {high}, not {value}.")
    return value


def validate(
    request: ImageRequest,
    limits: Limits,
    profile: ModelProfile,
    count_tokens: Callable[[str], int],
) -> tuple[ImageRequest, list[str]]:
    """Return the request with every field resolved, and warnings for the user.

    Raises `InvalidRequest` naming the field and the allowed range. A prompt longer than the
    tokenizer's window is not an error (every SD tool truncates) but gets a warning.
    """
    warnings: list[str] = []
    if not isinstance(request.prompt, str) or not isinstance(request.negative_prompt, str):
        raise InvalidRequest("prompt", "The prompt must be text.")
    if len(request.prompt) > MAX_PROMPT_CHARS * 4:
        raise InvalidRequest(
            "prompt", f"The prompt is too long (limit {MAX_PROMPT_CHARS} characters)."
        )
    prompt = clean_text(request.prompt)
    negative = clean_text(request.negative_prompt)
    if not prompt:
        raise InvalidRequest("prompt", "The prompt is empty. Describe the image you want.")
    for name, text in (("prompt", prompt), ("negative_prompt", negative)):
        if len(text) > MAX_PROMPT_CHARS:
            raise InvalidRequest(
                name,
                f"The {name.replace('_', ' ')} is too long (limit {MAX_PROMPT_CHARS} characters).",
            )
        used = count_tokens(text) if text else 0
        if used > profile.max_tokens:
            warnings.append(
                f"The {name.replace('_', ' ')} is {used} tokens long; the model reads only "
                f"the first {profile.max_tokens}, so the rest was truncated."
            )

    steps = request.steps if request.steps is not None else profile.default_steps
    steps = _int_in("steps", steps, 1, limits.max_steps, "Steps")
    count = _int_in("count", request.count, 1, limits.max_count, "Image count")

    guidance = request.guidance if request.guidance is not None else profile.default_guidance
    if isinstance(guidance, bool) or not isinstance(guidance, int | float) or guidance != guidance:
        raise InvalidRequest("guidance", f"Guidance must be a number, not {guidance!r}.")
    if not 0.0 <= guidance <= limits.max_guidance:
        raise InvalidRequest(
            "guidance", f"Guidance must be between 0 and {limits.max_guidance:g}, not {guidance:g}."
        )

    sizes = {}
    for name, value, high in (
        ("width", request.width, limits.max_width),
        ("height", request.height, limits.max_height),
    ):
        value = profile.native_size if value is None else value
        value = _int_in(name, value, limits.min_size, high, name.capitalize())
        if value % 8:
            raise InvalidRequest(name, f"{name.capitalize()} must be a multiple of 8, not {value}.")
        sizes[name] = value

    seed = request.seed
    if seed is None:
        seed = secrets.randbelow(MAX_SEED + 1)
    seed = _int_in("seed", seed, 0, MAX_SEED, "Seed")

    resolved = replace(
        request,
        prompt=prompt,
        negative_prompt=negative,
        seed=seed,
        steps=steps,
        guidance=float(guidance),
        width=sizes["width"],
        height=sizes["height"],
        count=count,
        user=str(request.user),
    )
    return resolved, warnings
