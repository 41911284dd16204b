"""The canvas operations behind Zoom out, Pan, Vary (Region) and the face fix: pure functions
from a picture to a picture and a mask (or back), which `derived.py` turns into inpaint
requests. Pillow and numpy only (no torch): the bot, the command line and tests call them
anywhere.

- `zoom_out`: the picture in the middle of a canvas `factor` times its size, the new border
  masked; the request then renders the canvas at the model's area (validation's sizing), so
  the picture shrinks in the middle, as Midjourney's Zoom Out does.
- `pan`: the canvas extended on one side by a share of the picture, that side masked; the
  aspect ratio changes, within what the size limits can hold.
- `region_mask`: a segmentation model's scores (`vision.segment`) as a mask, grown a little.
- `box_masks` / `merge_fixes`: the face fix's masks, one per detected box, and the fixed
  areas pasted into one picture (each fix is its own "Only masked" request, so they batch:
  `/imagine fix:`, `fixstage.py`).
- `fix_canvas`: the face fix as one request: every face's mask in one, which the "Only
  masked" inpaint crops around (one job, one charge, one mask kept for a restart).

The new border starts as the picture stretched and blurred (A1111's "fill": its colours, no
detail), which the inpaint pipeline then makes anew at full strength.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .config import Limits
from .errors import InvalidRequest

if TYPE_CHECKING:
    import numpy as np
    from PIL.Image import Image

__all__ = [
    "FIX_OFF",
    "MAX_ZOOM",
    "MIN_ZOOM",
    "NO_FACES",
    "PAN_SHARE",
    "Canvas",
    "Direction",
    "box_masks",
    "fix_canvas",
    "merge_fixes",
    "pan",
    "region_mask",
    "zoom_out",
]

#: Zoom out by at least this much (less changes nothing one could see) and at most this
#: much (the picture would be a thumbnail in the middle).
MIN_ZOOM = 1.1
MAX_ZOOM = 4.0
#: Pan extends the picture by this share of its width (or height).
PAN_SHARE = 0.5
#: The face fix's refusals: none configured, none found (both before anything is charged).
FIX_OFF = "Fixing faces is off here: no face detector is configured ([fix] detector)."
NO_FACES = "No faces were found in the picture, so there is nothing to fix. Nothing was charged."


class Direction(enum.StrEnum):
    """Where Pan extends the picture (A1111's outpainting directions)."""

    LEFT = "left"
    RIGHT = "right"
    UP = "up"
    DOWN = "down"


@dataclass(frozen=True, slots=True)
class Canvas:
    """A picture on a new canvas: `picture` (RGB) and `mask` ("L", white: to be made), and
    the A1111 fields that say how it was made."""

    picture: Image
    mask: Image
    parameters: tuple[tuple[str, str], ...]


def _placed(picture: Image, size: tuple[int, int], at: tuple[int, int]) -> Canvas:
    """`picture` at `at` on a canvas of `size`: the rest filled with its blurred colours and
    masked."""
    from PIL import Image as PILImage
    from PIL import ImageFilter

    rgb = picture.convert("RGB")
    fill = rgb.resize(size, PILImage.Resampling.BILINEAR)
    fill = fill.filter(ImageFilter.GaussianBlur(max(size) / 16))
    fill.paste(rgb, at)
    mask = PILImage.new("L", size, 255)
    mask.paste(0, (*at, at[0] + rgb.width, at[1] + rgb.height))
    return Canvas(fill, mask, ())


def zoom_out(picture: Image, factor: float) -> Canvas:
    """The picture in the middle of a canvas `factor` times its width and height, the new
    border masked; `InvalidRequest` for a factor outside `MIN_ZOOM`..`MAX_ZOOM`."""
    if isinstance(factor, bool) or not isinstance(factor, int | float):
        raise InvalidRequest("zoom", f"The zoom must be a number, not {factor!r}.")
    if not MIN_ZOOM <= factor <= MAX_ZOOM:  # NaN fails too
        raise InvalidRequest(
            "zoom", f"Zoom out by {MIN_ZOOM:g} to {MAX_ZOOM:g} times, not {factor:g}."
        )
    width, height = picture.size
    size = (round(width * factor), round(height * factor))
    at = ((size[0] - width) // 2, (size[1] - height) // 2)
    canvas = _placed(picture, size, at)
    return Canvas(canvas.picture, canvas.mask, (("Zoom out", f"{factor:g}"),))


def pan(picture: Image, direction: str, limits: Limits, *, share: float = PAN_SHARE) -> Canvas:
    """The canvas extended `share` of the picture towards `direction`, that side masked;
    `InvalidRequest` for an unknown direction, or when the new aspect ratio is beyond what
    the size limits can hold (`max_width` by `min_size`, or `min_size` by `max_height`)."""
    try:
        side = Direction(direction)
    except ValueError:
        choices = ", ".join(d.value for d in Direction)
        raise InvalidRequest("direction", f"Pan {choices}, not {direction!r}.") from None
    width, height = picture.size
    across = side in (Direction.LEFT, Direction.RIGHT)
    extra = round((width if across else height) * share)
    size = (width + extra, height) if across else (width, height + extra)
    widest, tallest = limits.max_width / limits.min_size, limits.min_size / limits.max_height
    if not tallest <= size[0] / size[1] <= widest:
        raise InvalidRequest(
            "direction",
            f"The picture cannot be extended further {side.value}: it would be "
            f"{size[0] / size[1]:.2g} times as wide as it is tall, and the size limits hold "
            f"{tallest:.2g} to {widest:.2g}.",
        )
    at = (extra if side is Direction.LEFT else 0, extra if side is Direction.UP else 0)
    canvas = _placed(picture, size, at)
    fields = (("Outpainting direction", side.value), ("Pixels to expand", str(extra)))
    return Canvas(canvas.picture, canvas.mask, fields)


def region_mask(
    scores: np.ndarray, size: tuple[int, int], *, threshold: float = 0.4, grow: int = 8
) -> Image | None:
    """A mask of `size` from a segmentation model's scores (0..1, any resolution): white where
    they pass `threshold`, grown by `grow` pixels so the region's edge is made anew too; None
    when nothing passes (the words found nothing)."""
    import numpy as np
    from PIL import Image as PILImage
    from PIL import ImageFilter

    values = np.clip(np.asarray(scores, dtype=np.float32), 0.0, 1.0)
    score = PILImage.fromarray(np.rint(values * 255).astype(np.uint8))
    score = score.resize(size, PILImage.Resampling.BILINEAR)
    mask = score.point(lambda v: 255 if v >= threshold * 255 else 0)
    if mask.getextrema()[1] == 0:
        return None
    if grow > 0:
        mask = mask.filter(ImageFilter.MaxFilter(2 * grow + 1))
    return mask


def box_masks(
    size: tuple[int, int], boxes: Sequence[tuple[int, int, int, int]], *, grow: float = 0.1
) -> list[Image]:
    """One mask per detected box (x1, y1, x2, y2): an ellipse over the box grown by `grow`
    of its size each way (a face's outline, not its square), clipped to the picture."""
    from PIL import Image as PILImage
    from PIL import ImageDraw

    masks = []
    for x1, y1, x2, y2 in boxes:
        dx, dy = (x2 - x1) * grow, (y2 - y1) * grow
        mask = PILImage.new("L", size, 0)
        ImageDraw.Draw(mask).ellipse((x1 - dx, y1 - dy, x2 + dx, y2 + dy), fill=255)
        masks.append(mask)
    return masks


def merge_fixes(picture: Image, fixed: Sequence[Image]) -> Image:
    """`picture` with what each of `fixed` changed in it (each one `picture` with one area
    made anew, as an "Only masked" inpaint pastes it back): where one fix alone changed a
    pixel it is that fix's exactly; where two overlap, both changes add up."""
    import numpy as np
    from PIL import Image as PILImage

    base = np.asarray(picture.convert("RGB"), np.int16)
    out = base.copy()
    for image in fixed:
        out += np.asarray(image.convert("RGB"), np.int16) - base
    return PILImage.fromarray(np.clip(out, 0, 255).astype(np.uint8))


def fix_canvas(
    picture: Image,
    boxes: Sequence[tuple[int, int, int, int]],
    *,
    detector: str = "",
    what: str = "faces",
) -> Canvas:
    """The face fix's canvas: `picture` with every box's mask (`box_masks`) in one, and the
    fields ADetailer writes; `InvalidRequest` when there are no boxes (no face found; `what`:
    "hands" for the hand fix)."""
    from PIL import ImageChops

    if not boxes:
        raise InvalidRequest("fix", NO_FACES.replace("faces", what))
    masks = box_masks(picture.size, boxes)
    merged = masks[0]
    for mask in masks[1:]:
        merged = ImageChops.lighter(merged, mask)
    fields = (("ADetailer model", detector),) if detector else ()
    fixed = (f"{what.capitalize()} fixed", str(len(boxes)))
    return Canvas(picture.convert("RGB"), merged, (*fields, fixed))
