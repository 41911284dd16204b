"""`/imagine fix:`: what a request may ask to fix once its images are made, and what the
PNG records of it. Pure Python (no torch, no Pillow): validation and the front ends use it;
`fixstage.py` runs the fix.

A fix is ADetailer's recipe, as the Fix faces button's (`derived.fix_request`): the
detector's boxes (faces, hands or both) masked in one, inpainted "Only masked" at a low
strength with the image's own prompt and seed. The PNG keeps the image's own parameters and
adds the fields ADetailer writes (`ADetailer model`, `ADetailer denoising strength`, ...; a
second unit's with " 2nd"), and how many were found.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Protocol

from .canvas import FIX_OFF
from .errors import InvalidRequest

__all__ = [
    "FIX_CHOICES",
    "FIX_TARGETS",
    "HANDS_OFF",
    "checked_fix",
    "detector_name",
    "fix_fields",
    "fix_targets",
    "require_detectors",
]

#: What can be fixed, in the order they are recorded (ADetailer's units).
FIX_TARGETS = ("faces", "hands")
#: `/imagine fix:`'s choices and what each fixes.
FIX_CHOICES: Mapping[str, tuple[str, ...]] = {
    "faces": ("faces",),
    "hands": ("hands",),
    "both": FIX_TARGETS,
}
HANDS_OFF = "Fixing hands is off here: no hand detector is configured ([fix] hands_detector)."
_OFF = {"faces": FIX_OFF, "hands": HANDS_OFF}
_UNITS = ("", " 2nd")  # ADetailer's field suffixes for its first and second unit


class _Inpaints(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def inpaint(self) -> bool: ...


def fix_targets(choice: str) -> tuple[str, ...]:
    """What a `fix:` choice ("faces", "hands", "both"; "" for none) fixes; `InvalidRequest`
    for any other word."""
    if not choice:
        return ()
    try:
        return FIX_CHOICES[choice.strip().lower()]
    except KeyError:
        raise InvalidRequest(
            "fix", f"Fix {', '.join(FIX_CHOICES)} (or nothing), not {choice!r}."
        ) from None


def checked_fix(
    fix: Collection[str], fixers: Collection[str], profile: _Inpaints
) -> tuple[str, ...]:
    """`fix` in `FIX_TARGETS` order, or `InvalidRequest`: an unknown target, one without a
    detector here (`fixers`: those with one), or a model that cannot inpaint."""
    if not fix:
        return ()
    require_detectors(fix, fixers)
    if not profile.inpaint:
        raise InvalidRequest(
            "fix",
            f"The model {profile.name} cannot inpaint, so it cannot fix faces or hands: "
            "leave out fix, or choose another model.",
        )
    return tuple(target for target in FIX_TARGETS if target in fix)


def require_detectors(fix: Collection[str], fixers: Collection[str]) -> None:
    """`InvalidRequest` unless every target of `fix` is known and has a detector here
    (`fixers`: the targets with one)."""
    if isinstance(fix, str) or any(target not in FIX_TARGETS for target in fix):
        raise InvalidRequest("fix", f"Fix faces, hands or both, not {fix!r}.")
    for target in FIX_TARGETS:
        if target in fix and target not in fixers:
            raise InvalidRequest("fix", _OFF[target])


def detector_name(source: str) -> str:
    """How the PNG names a detector: its hub id's or folder's last part, a builtin's name."""
    return source.rstrip("/").rsplit("/", 1)[-1].removeprefix("builtin:")


def fix_fields(
    found: Mapping[str, int],
    detectors: Mapping[str, str],
    *,
    threshold: float,
    strength: float,
    padding: int,
    blur: int,
) -> tuple[tuple[str, str], ...]:
    """The PNG fields of a fix that found `found[target]` boxes of each target asked, as
    ADetailer writes its units (the first unfixed, the second " 2nd"), then how many of
    each were fixed."""
    fields: list[tuple[str, str]] = []
    for unit, target in zip(_UNITS, found, strict=False):
        fields += [
            (f"ADetailer model{unit}", detector_name(detectors[target])),
            (f"ADetailer confidence{unit}", f"{threshold:g}"),
            (f"ADetailer mask blur{unit}", str(blur)),
            (f"ADetailer denoising strength{unit}", f"{strength:g}"),
            (f"ADetailer inpaint only masked{unit}", "True"),
            (f"ADetailer inpaint padding{unit}", str(padding)),
        ]
    fields += [(f"{target.capitalize()} fixed", str(count)) for target, count in found.items()]
    return tuple(fields)
