"""Inpainting's request side: the mask's checks, its blur and the seams, and what the PNG
records. Pure Python and Pillow (no torch): validation (`request.validate`) and the front
ends use it; the torch side only calls `blurred` and `overlaid`.

A mask is a picture the size of the request's picture: white where the picture is made anew,
black where it is kept, grey in between. Its edge is blurred by `mask_blur` pixels (A1111's
"Mask blur", default 4), and the result is laid over the picture through the blurred mask, as
A1111 does and as diffusers' `padding_mask_crop` does with `apply_overlay`: the kept pixels
stay the picture's own (the VAE never touches them), the seam fades over a few pixels.

With `inpaint_padding` ("Only masked" in A1111) the pipeline inpaints only the area around
the mask, `padding` pixels wider and grown to the request's aspect ratio, at the request's
size, and pastes it back into the picture (diffusers' `padding_mask_crop`): a small region
(a face) gets all the model's pixels. The picture then keeps its own size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from .errors import InvalidRequest

if TYPE_CHECKING:
    from PIL.Image import Image

    from .config import Limits

__all__ = [
    "DEFAULT_INPAINT_STRENGTH",
    "DEFAULT_MASK_BLUR",
    "MAX_MASK_BLUR",
    "MAX_PADDING",
    "MAX_PICTURE_SCALE",
    "Able",
    "Asked",
    "blurred",
    "checked_inpaint",
    "checked_mask",
    "fitted_mask",
    "inpaint_parameters",
    "overlaid",
]

#: A1111's default mask blur, in pixels, and the most a request may ask.
DEFAULT_MASK_BLUR = 4
MAX_MASK_BLUR = 64
#: The strength of inpainting when none is asked: diffusers' inpaint pipelines' (the masked
#: area is made anew from noise).
DEFAULT_INPAINT_STRENGTH = 1.0
#: "Masked area padding" at most (A1111's slider goes to 256).
MAX_PADDING = 256
#: "Only masked" keeps the picture's own size: up to this many times the size limits per
#: side (a 4x upscale's face can be fixed).
MAX_PICTURE_SCALE = 4


class Asked(Protocol):
    """What `checked_inpaint` reads of a request (`request.ImageRequest`)."""

    @property
    def init_image(self) -> Image | None: ...
    @property
    def mask(self) -> Image | None: ...
    @property
    def mask_blur(self) -> int | None: ...
    @property
    def inpaint_padding(self) -> int | None: ...


class Able(Protocol):
    """What `checked_inpaint` reads of a model's profile (`request.ModelProfile`)."""

    @property
    def name(self) -> str: ...
    @property
    def inpaint(self) -> bool: ...
    @property
    def inpaint_only(self) -> bool: ...
    @property
    def inpaint_crop(self) -> bool: ...


def _whole(name: str, value: object, low: int, high: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidRequest(name, f"{what} must be a whole number from {low} to {high}.")
    return value


def checked_mask(mask: Any, size: tuple[int, int]) -> Image:
    """`mask` as an "L" image (white: made anew), or `InvalidRequest` saying what is wrong:
    not the picture's size, in colour, or with nothing to paint."""
    from PIL import Image as PILImage

    if not isinstance(mask, PILImage.Image):
        raise InvalidRequest("mask", "The mask must be a picture.")
    if mask.size != size:
        raise InvalidRequest(
            "mask",
            f"The mask is {mask.width}x{mask.height} but the picture is {size[0]}x{size[1]}: "
            "draw the mask on the picture itself.",
        )
    if mask.mode in ("RGBA", "LA", "PA", "P") or "transparency" in mask.info:
        mask = mask.convert("RGBA")
        flat = PILImage.new("RGBA", mask.size, "black")  # transparent: kept
        mask = PILImage.alpha_composite(flat, mask)
    if mask.mode not in ("1", "L"):
        rgb = mask.convert("RGB")
        red, green, blue = rgb.split()
        if red.tobytes() != green.tobytes() or green.tobytes() != blue.tobytes():
            raise InvalidRequest(
                "mask",
                "The mask must be black and white (or grey): white where the picture should "
                "change, black where it stays.",
            )
        mask = red
    mask = mask.convert("L")
    if mask.getextrema()[1] == 0:
        raise InvalidRequest(
            "mask", "The mask is all black, so nothing would change: paint the area white."
        )
    return mask


def checked_inpaint(
    request: Asked, profile: Able, limits: Limits
) -> tuple[Image | None, int | None, int | None, list[str]]:
    """The checked mask (before fitting), blur and padding of `request` on the model of
    `profile`, and warnings for its requester; all None for a request without a mask.
    "Only masked" becomes the whole picture, with a warning, on a model whose pipeline takes
    no `padding_mask_crop`, and keeps the picture within `MAX_PICTURE_SCALE` times the size
    limits."""
    mask, blur, padding = request.mask, request.mask_blur, request.inpaint_padding
    picture = request.init_image
    if mask is None:
        if blur is not None or padding is not None:
            raise InvalidRequest("mask", "Mask blur and padding apply only to inpainting.")
        if profile.inpaint_only:
            raise InvalidRequest(
                "mask", f"The model {profile.name} only inpaints: give a picture and a mask."
            )
        return None, None, None, []
    if picture is None:
        raise InvalidRequest("mask", "A mask needs the picture it is painted on.")
    if not profile.inpaint:
        raise InvalidRequest(
            "mask", f"The model {profile.name} cannot inpaint: leave out the mask."
        )
    warnings: list[str] = []
    checked = checked_mask(mask, picture.size)
    blur = DEFAULT_MASK_BLUR if blur is None else blur
    blur = _whole("mask_blur", blur, 0, MAX_MASK_BLUR, "Mask blur")
    if padding is not None:
        padding = _whole("inpaint_padding", padding, 0, MAX_PADDING, "Masked area padding")
        if not profile.inpaint_crop:
            warnings.append(
                f"The model {profile.name} cannot inpaint only the masked area, so the whole "
                "picture was used."
            )
            padding = None
    most = (limits.max_width * MAX_PICTURE_SCALE, limits.max_height * MAX_PICTURE_SCALE)
    if padding is not None and (picture.width > most[0] or picture.height > most[1]):
        raise InvalidRequest(
            "image",
            f"The picture is {picture.width}x{picture.height}; inpainting only the masked "
            f"area takes pictures up to {most[0]}x{most[1]}.",
        )
    return checked, blur, padding, warnings


def fitted_mask(mask: Image, width: int, height: int) -> Image:
    """The mask cropped and resized as `request._fitted` fits its picture (the same box)."""
    from PIL import Image as PILImage
    from PIL import ImageOps

    if mask.size == (width, height):
        return mask
    return ImageOps.fit(mask, (width, height), PILImage.Resampling.LANCZOS)


def blurred(mask: Image, blur: int) -> Image:
    """The mask with its edge blurred by `blur` pixels (a Gaussian of that radius, as
    diffusers' `VaeImageProcessor.blur` and A1111's mask blur)."""
    from PIL import ImageFilter

    return mask.filter(ImageFilter.GaussianBlur(blur)) if blur > 0 else mask


def overlaid(picture: Image, made: Image, mask: Image) -> Image:
    """`made` where `mask` is white, `picture` where it is black, blended between: the kept
    pixels are exactly the picture's (the pipeline's VAE round trip would change them)."""
    from PIL import Image as PILImage

    return PILImage.composite(made.convert("RGB"), picture.convert("RGB"), mask)


def inpaint_parameters(blur: int | None, padding: int | None) -> list[tuple[str, str]]:
    """The PNG's A1111 fields of an inpaint request, named as A1111 writes them."""
    fields = [("Mask blur", str(blur if blur is not None else DEFAULT_MASK_BLUR))]
    if padding is None:
        return [*fields, ("Inpaint area", "Whole picture")]
    return [*fields, ("Inpaint area", "Only masked"), ("Masked area padding", str(padding))]
