"""Requests made from an earlier image: the upscale ("hires fix") and variations.

Both are ordinary image-to-image requests, so they queue, batch and share the GPU with
everyone else's; only the recipe lives here, shared by the Discord buttons and the command
line. Pure Python and Pillow (no torch).
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import replace
from typing import TYPE_CHECKING

from .canvas import Canvas, fix_canvas
from .config import Limits
from .errors import InvalidRequest
from .inpaint import DEFAULT_INPAINT_STRENGTH
from .pngmeta import Parameters
from .request import ImageRequest
from .sizing import fit_aspect

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = [
    "FIX_PADDING",
    "FIX_STRENGTH",
    "STRONG_VARIATION",
    "SUBTLE_VARIATION",
    "UPSCALE_FACTOR",
    "UPSCALE_STRENGTH",
    "canvas_request",
    "fix_request",
    "fix_size",
    "upscale_request",
    "upscaled_size",
    "variation_request",
]

#: The upscale: twice the width and height, refined at a low strength (A1111's hires fix).
UPSCALE_FACTOR = 2.0
UPSCALE_STRENGTH = 0.35
#: Variations: new seeds over the chosen image; subtle keeps its layout, strong only its gist.
SUBTLE_VARIATION = 0.35
STRONG_VARIATION = 0.7
#: The face fix (ADetailer's defaults): each face inpainted "Only masked" at a low strength.
FIX_STRENGTH = 0.4
FIX_PADDING = 32


def _steps(source: Parameters, strength: float, limits: Limits) -> int:
    """The source's steps, raised so that `strength` leaves at least one step to run."""
    return min(limits.max_steps, max(source.steps, math.ceil(1 / strength - 1e-9)))


def _model(source: Parameters, models: Collection[str]) -> str | None:
    return source.model if source.model in models else None


def _rgb(image: Image) -> Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def _from_source(
    source: Parameters,
    init: Image,
    limits: Limits,
    *,
    strength: float,
    user: str,
    models: Collection[str],
) -> ImageRequest:
    """Image-to-image from `init` at `strength` with what `source` was made with: its
    prompts and guidance, its steps (raised if `strength` needs it), its model if known.
    The caller sets the seed, the size and the parameters naming the source."""
    return ImageRequest(
        prompt=source.prompt,
        negative_prompt=source.negative_prompt,
        steps=_steps(source, strength, limits),
        guidance=source.cfg_scale,
        user=user,
        init_image=init,
        strength=strength,
        model=_model(source, models),
    )


def upscaled_size(
    width: int, height: int, limits: Limits, factor: float = UPSCALE_FACTOR
) -> tuple[int, int] | None:
    """The size an upscale of a `width`×`height` image comes out at: `factor`× each side,
    less where the limits cap it (keeping the aspect). None when that is no larger than the
    image: at the size cap an upscale would only re-render the image at its own size."""
    area = round(factor * factor * width * height)
    bigger = fit_aspect(width / height, area, limits)
    return bigger if bigger[0] * bigger[1] > width * height else None


def upscale_request(
    source: Parameters,
    image: Image,
    limits: Limits,
    *,
    factor: float = UPSCALE_FACTOR,
    strength: float = UPSCALE_STRENGTH,
    user: str = "",
    origin: str | None = None,
    models: Collection[str] = (),
) -> ImageRequest:
    """`image` at `factor`× its size (less where the limits cap it, keeping its aspect),
    refined by image-to-image from its own prompt and seed at a low `strength`, by the same
    model when it is one of `models` (else the default one).

    `InvalidRequest` when the image is already at the largest size the limits allow.
    """
    from PIL import Image as PILImage

    size = upscaled_size(image.width, image.height, limits, factor)
    if size is None:
        raise InvalidRequest(
            "upscale",
            f"This image is already at the largest size the bot makes "
            f"({image.width}x{image.height}), so it cannot be upscaled. Nothing was charged.",
        )
    width, height = size
    init = _rgb(image).resize((width, height), PILImage.Resampling.LANCZOS)
    extra = [("Hires upscale", f"{factor:g}")]
    if origin:
        extra.append(("Source", origin))
    request = _from_source(source, init, limits, strength=strength, user=user, models=models)
    return replace(request, seed=source.seed, width=width, height=height, parameters=tuple(extra))


def variation_request(
    source: Parameters,
    image: Image,
    limits: Limits,
    *,
    strength: float,
    count: int = 4,
    seed: int | None = None,
    user: str = "",
    origin: str | None = None,
    models: Collection[str] = (),
    native: bool = False,
) -> ImageRequest:
    """`count` new images from `image` by image-to-image with new seeds (random when None),
    by the same model when it is one of `models` (else the default one).

    They are made at the image's size, or with `native` at the model's native area at the
    image's aspect ratio (the engine sizes it), as `/imagine` makes them: variations of an
    upscale are not four images at four times the pixels for the price of four.
    """
    request = _from_source(source, _rgb(image), limits, strength=strength, user=user, models=models)
    return replace(
        request,
        seed=seed,
        width=None if native else image.width,
        height=None if native else image.height,
        count=count,
        parameters=(("Source", origin),) if origin else (),
    )


def canvas_request(
    source: Parameters,
    canvas: Canvas,
    limits: Limits,
    *,
    prompt: str | None = None,
    strength: float = DEFAULT_INPAINT_STRENGTH,
    padding: int | None = None,
    seed: int | None = None,
    user: str = "",
    origin: str | None = None,
    models: Collection[str] = (),
) -> ImageRequest:
    """Inpainting of `canvas` (a zoom, a pan, a region, a face) with what `source` was made
    with (its prompt unless `prompt` says what the masked area should show), at the model's
    area for the canvas's aspect ratio (validation sizes it). A `source` of 0 steps (a
    picture without parameters) leaves steps and guidance to the model. Its PNG records the
    canvas's fields and the source."""
    request = _from_source(
        source, canvas.picture, limits, strength=strength, user=user, models=models
    )
    known = source.steps > 0
    extra = [*canvas.parameters, *((("Source", origin),) if origin else ())]
    return replace(
        request,
        prompt=prompt or request.prompt,
        steps=request.steps if known else None,
        guidance=request.guidance if known else None,
        seed=seed,
        mask=canvas.mask,
        inpaint_padding=padding,
        parameters=tuple(extra),
    )


def fix_size(
    width: int, height: int, native: int, multiple: int, limits: Limits
) -> tuple[int, int]:
    """The size a `width`×`height` image's fix is made at: the model's area (`native`²) at
    the image's aspect ratio, as validation sizes `fix_request` ("Only masked" renders the
    crop there and pastes it back)."""
    return fit_aspect(width / max(1, height), native * native, limits, multiple=multiple)


def fix_request(
    source: Parameters,
    image: Image,
    boxes: Collection[tuple[int, int, int, int]],
    limits: Limits,
    *,
    detector: str = "",
    what: str = "faces",
    seed: int | None = None,
    user: str = "",
    origin: str | None = None,
    models: Collection[str] = (),
) -> ImageRequest:
    """The face fix (`what`: "hands", the hand fix) of `image` (ADetailer's recipe): every
    detected face's mask in one, inpainted "Only masked" (`FIX_PADDING` around the faces, at
    the model's area) at `FIX_STRENGTH` with the source's prompt; the rest of the picture
    stays its own. `InvalidRequest` when `boxes` is empty (none found: nothing to charge)."""
    canvas = fix_canvas(image, list(boxes), detector=detector, what=what)
    return canvas_request(
        source,
        canvas,
        limits,
        strength=FIX_STRENGTH,
        padding=FIX_PADDING,
        seed=seed,
        user=user,
        origin=origin,
        models=models,
    )
