"""The canvas buttons' requests: Zoom Out (2x, 1.5x, a custom factor), Pan ⬅ ➡ ⬆ ⬇, Vary
(Region) and Fix faces, each an inpainting of the chosen image with its own parameters (the
engine's `canvas_request`, `fix_request`), and what kind of job each is.

Vary (Region) finds the part named in words with the engine's region model, Fix faces the
faces with its face detector; when either finds nothing, that is a private refusal that
costs nothing (no job is made).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from engine import InvalidRequest, Parameters
from engine.canvas import Canvas, Direction, pan, zoom_out
from engine.derived import canvas_request, fix_request
from engine.fixing import detector_name

from ..ledger import JobKind
from ..presentation.modals import FACTOR, WHAT, WHERE
from ..services import Action, Services

if TYPE_CHECKING:
    from PIL.Image import Image

    from engine import ImageRequest

__all__ = ["ZOOMS", "canvas_of", "zoom_factor"]

#: The zoom buttons' factors (Custom Zoom asks for its own).
ZOOMS: Mapping[Action, float] = {Action.ZOOM_2: 2.0, Action.ZOOM_15: 1.5}
#: The fix buttons and what each fixes (the ledger's kind is `fix` for both).
_FIXES: Mapping[Action, str] = {Action.FIX: "faces", Action.FIX_HANDS: "hands"}
_PANS: Mapping[Action, Direction] = {
    Action.PAN_LEFT: Direction.LEFT,
    Action.PAN_RIGHT: Direction.RIGHT,
    Action.PAN_UP: Direction.UP,
    Action.PAN_DOWN: Direction.DOWN,
}


def zoom_factor(text: str) -> float:
    """A typed zoom factor ("1.8", "1,8", "2x") as a number; the range is the engine's to
    check (`zoom_out`). `InvalidRequest` when it is not a number."""
    cleaned = text.strip().lower().removesuffix("x").replace(",", ".").strip()
    try:
        return float(cleaned)
    except ValueError:
        raise InvalidRequest(
            "zoom", f"Zoom out by a number from 1.1 to 4 (such as 1.8), not {text.strip()!r}."
        ) from None


async def canvas_of(
    services: Services,
    action: Action,
    answers: Mapping[str, str],
    source: Parameters,
    image: Image,
    *,
    user: str,
    origin: str,
) -> tuple[ImageRequest, JobKind]:
    """The inpaint request a canvas `action` makes of `image` (made with `source`), and its
    job's kind; `InvalidRequest` for a bad factor, a pan the limits cannot hold, or a region
    the words do not find, no face found (or no face detector)."""
    engine = services.engine
    limits = engine.limits
    if action in _FIXES:
        what = _FIXES[action]
        boxes = await engine.detect(image, what)
        request = fix_request(
            source,
            image,
            boxes,
            limits,
            detector=detector_name(engine.config.fix_detectors.get(what, "")),
            what=what,
            user=user,
            origin=origin,
            models=engine.model_names,
        )
        return request, JobKind.FIX
    prompt = None
    if action in ZOOMS or action is Action.ZOOM_CUSTOM:
        factor = ZOOMS.get(action) or zoom_factor(answers.get(FACTOR, ""))
        canvas, kind = zoom_out(image, factor), JobKind.ZOOM
    elif action in _PANS:
        canvas, kind = pan(image, _PANS[action], limits), JobKind.PAN
    else:
        mask = await engine.region_mask(image, answers.get(WHERE, ""))
        canvas, kind = Canvas(image, mask, ()), JobKind.REGION
        prompt = answers.get(WHAT, "").strip() or None
    request = canvas_request(
        source,
        canvas,
        limits,
        prompt=prompt,
        user=user,
        origin=origin,
        models=engine.model_names,
    )
    return request, kind
