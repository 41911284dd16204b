"""The model families the engine serves, found from a pipeline's class (see `base.py`).

A model of a family not listed here cannot be served: `family_of` says which it is and which
are.
"""

from __future__ import annotations

from typing import Any

from .base import DenoiserCall, Family, FamilyDefaults
from .flux import Chroma, Flux, FluxFill, FluxKontext
from .flux2 import Flux2Klein
from .qwenimage import QwenImage, QwenImageEdit
from .sd import SD, SDXL
from .sd3 import SD3
from .zimage import ZImage

__all__ = ["FAMILIES", "DenoiserCall", "Family", "FamilyDefaults", "family_named", "family_of"]

FAMILIES: tuple[Family, ...] = (
    SD(),
    SDXL(),
    Flux(),
    FluxKontext(),
    FluxFill(),
    Chroma(),
    SD3(),
    ZImage(),
    QwenImage(),
    QwenImageEdit(),
    Flux2Klein(),
)


def family_of(pipe: Any) -> Family:
    """The family of a text-to-image or edit pipeline; `ValueError` naming it when none
    serves it."""
    cls = type(pipe).__name__
    for family in FAMILIES:
        if cls in family.pipelines:
            return family
    served = ", ".join(p for f in FAMILIES for p in f.pipelines)
    raise ValueError(f"{cls} models are not served (served: {served})")


def family_named(name: str) -> Family:
    for family in FAMILIES:
        if family.name == name:
            return family
    raise KeyError(name)
