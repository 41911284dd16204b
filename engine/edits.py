"""The checks and fitting of an edit by instruction's pictures, for `request.validate`.

Pure Python (no torch); `reference_size` (in `sizing`) says which size each picture gets.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from .errors import InvalidRequest
from .sizing import reference_size

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["edit_problem", "fitted_references"]


def edit_problem(
    model: str, most: int, given: int, *, init: bool, strength: bool
) -> InvalidRequest | None:
    """What is wrong with an edit of `given` pictures on `model`, which takes at most `most`
    (0: it does not edit), with an init image or a strength beside them; None: nothing."""
    if not most:
        why = f"The model {model} does not edit pictures by instruction: choose one that does."
    elif given > most:
        why = f"The model {model} edits with at most {most} picture(s), not {given}."
    elif init:
        why = "Give a picture to start from or pictures to edit by instruction, not both."
    elif strength:
        return InvalidRequest("strength", "Strength does not apply to an edit by instruction.")
    else:
        return None
    return InvalidRequest("image", why)


def fitted_references(
    pictures: Sequence[Image],
    fit: Callable[[Image, int, int], Image],
    *,
    sizes: Sequence[tuple[int, int]],
    area: int,
    multiple: int,
    min_side: int,
) -> tuple[Image, ...]:
    """Each picture fitted (`fit(picture, width, height)`) to its `reference_size`."""
    return tuple(
        fit(
            p,
            *reference_size(*p.size, sizes=sizes, area=area, multiple=multiple, min_side=min_side),
        )
        for p in pictures
    )
