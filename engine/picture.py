"""Pictures people send to start from: decoded safely, or refused with a plain reason.

Shared by the Discord attachment option and the command line. Only PNG, JPEG and WebP are
opened; the pixel count is checked from the header before any pixel is decoded (a 50 kB
file can claim to be 100 000 × 100 000 pixels); animated files give their first frame; the
EXIF orientation is applied; transparency is flattened onto white.
"""

from __future__ import annotations

import io
import warnings
from typing import TYPE_CHECKING

from .errors import InvalidRequest

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["FORMATS", "MAX_PICTURE_PIXELS", "decode_picture"]

#: Formats Pillow may open here (its name for each).
FORMATS = ("PNG", "JPEG", "WEBP")
#: Pixels a picture may have (width × height): a 8K photo fits, a decompression bomb not.
MAX_PICTURE_PIXELS = 40_000_000


def _refuse(why: str) -> InvalidRequest:
    return InvalidRequest("image", why)


def decode_picture(data: bytes, *, max_pixels: int = MAX_PICTURE_PIXELS) -> Image:
    """An RGB image from the bytes of a PNG, JPEG or WebP file; `InvalidRequest` otherwise."""
    from PIL import Image as PILImage
    from PIL import ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():  # the size is checked below, against our own limit
            warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
            opened = PILImage.open(io.BytesIO(data), formats=FORMATS)
    except PILImage.DecompressionBombError:
        raise _refuse("The picture has far too many pixels.") from None
    except UnidentifiedImageError:
        raise _unknown(data) from None
    except (OSError, ValueError) as exc:
        raise _refuse(f"The picture could not be read ({exc}).") from None
    with opened as image:
        width, height = image.size
        if width < 1 or height < 1 or width * height > max_pixels:
            raise _refuse(
                f"The picture is {width}×{height} pixels; the limit is "
                f"{max_pixels / 1e6:g} megapixels."
            )
        try:
            image.seek(0)  # an animation: its first frame
            image.load()
            upright = ImageOps.exif_transpose(image)
        except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt data
            raise _refuse(f"The picture is damaged or cut off ({exc}).") from None
        if upright.mode in ("RGBA", "LA", "PA") or "transparency" in upright.info:
            rgba = upright.convert("RGBA")
            flat = PILImage.new("RGB", rgba.size, "white")
            flat.paste(rgba, mask=rgba.getchannel("A"))
            return flat
        return upright.convert("RGB")


def _unknown(data: bytes) -> InvalidRequest:
    """Not one of our formats: say whether it is another kind of picture, or none."""
    from PIL import Image as PILImage

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with PILImage.open(io.BytesIO(data)) as probe:  # any format, header only
                kind = probe.format
    except Exception:
        return _refuse("That file is not a picture (PNG, JPEG or WebP).")
    return _refuse(f"{kind} pictures are not supported: send a PNG, JPEG or WebP.")
