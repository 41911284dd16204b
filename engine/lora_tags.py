"""A1111's `<lora:name:weight>` tags in a prompt: read, checked against the configured LoRAs,
and removed from the text a model reads. Pure Python, like `request`."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from .config import LoraSpec
from .errors import InvalidRequest

__all__ = [
    "LORA_TAG",
    "LORA_WEIGHT_RANGE",
    "MAX_LORAS",
    "LoraSet",
    "extract_loras",
    "resolve_loras",
    "without_tags",
]

#: LoRAs in one request, and their weights' range.
MAX_LORAS = 5
LORA_WEIGHT_RANGE = (-5.0, 5.0)

#: The LoRAs of a request with their weights, sorted by name; () for none.
LoraSet = tuple[tuple[str, float], ...]

# A1111's `<lora:name>` / `<lora:name:weight>`.
LORA_TAG = re.compile(r"<lora:([^:<>]*)(?::([^:<>]*))?>", re.IGNORECASE)


def extract_loras(prompt: str) -> tuple[str, list[tuple[str, float | None]]]:
    """The prompt without its `<lora:name:weight>` tags, and the tags (weight None when not
    written); `InvalidRequest` for a tag whose weight is not a number."""
    found: list[tuple[str, float | None]] = []
    for match in LORA_TAG.finditer(prompt):
        name, weight = match.group(1).strip(), match.group(2)
        value: float | None = None
        if weight is not None and weight.strip():
            try:
                value = float(weight)
            except ValueError:
                raise InvalidRequest(
                    "prompt",
                    f"The weight in {match.group(0)} must be a number, like <lora:{name}:0.8>.",
                ) from None
            if not math.isfinite(value):
                raise InvalidRequest("prompt", f"The weight in {match.group(0)} must be finite.")
        found.append((name, value))
    return without_tags(prompt), found


def without_tags(text: str) -> str:
    """`text` without its `<lora:...>` tags, its spaces collapsed."""
    return " ".join(LORA_TAG.sub(" ", text).split())


def resolve_loras(
    tags: list[tuple[str, float | None]],
    given: LoraSet,
    model: str,
    known: Mapping[str, LoraSpec],
) -> LoraSet:
    """The request's LoRAs with their weights: those it names in `given` and in its tags
    (a tag without a weight: the LoRA's configured one), checked against what is configured
    and fits `model`; a weight of 0 drops one."""
    chosen: dict[str, float] = dict(given)
    for name, weight in tags:
        spec = known.get(name) or next(
            (s for n, s in known.items() if n.lower() == name.lower()), None
        )
        if spec is None:
            names = ", ".join(sorted(known)) or "none are configured"
            raise InvalidRequest("prompt", f"There is no LoRA called {name!r} (known: {names}).")
        chosen[spec.name] = spec.weight if weight is None else weight
    low, high = LORA_WEIGHT_RANGE
    for name, weight in chosen.items():
        spec = known.get(name)
        if spec is None:
            raise InvalidRequest("prompt", f"There is no LoRA called {name!r}.")
        if not spec.fits(model):
            fits = ", ".join(spec.models)
            raise InvalidRequest(
                "prompt", f"The LoRA {name} does not fit the model {model} (it fits: {fits})."
            )
        if not low <= weight <= high:
            raise InvalidRequest(
                "prompt", f"A LoRA weight must be between {low:g} and {high:g}, not {weight:g}."
            )
    if len(chosen) > MAX_LORAS:
        raise InvalidRequest("prompt", f"At most {MAX_LORAS} LoRAs per image.")
    return tuple(sorted((n, float(w)) for n, w in chosen.items() if w != 0.0))
