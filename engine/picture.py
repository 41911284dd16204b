"""Pictures people send to start from: decoded safely, or refused with a plain reason.

Shared by the Discord attachment option and the command line. Only PNG, JPEG and WebP are
opened; the pixel count is checked from the header before any pixel is decoded (a 50 kB
file can claim to be 100 000 × 100 000 pixels); animated files give their first frame; the
EXIF orientation is applied; samples wider than 8 bits are scaled down, never clipped (Pillow's
own `convert("RGB")` clips a 16-bit PNG's 0..65535 to 255: white); transparency is flattened
onto white.
"""

from __future__ import annotations

import io
import warnings
from typing import TYPE_CHECKING

from .errors import InvalidRequest

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["FORMATS", "MAX_PICTURE_PIXELS", "decode_picture", "to_rgb"]

#: Formats Pillow may open here (its name for each).
FORMATS = ("PNG", "JPEG", "WEBP")
#: Pixels a picture may have (width × height): a 8K photo fits, a decompression bomb not.
MAX_PICTURE_PIXELS = 40_000_000
#: Pillow's one-channel modes wider than 8 bits, and the sample value each takes as white:
#: 16-bit grayscale PNGs open as I;16 (older Pillow: I, holding the same 0..65535), and
#: float pictures hold 0..1.
_WIDE = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535, "I": 65535, "F": 1.0}


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
        return to_rgb(upright)


def to_rgb(image: Image) -> Image:
    """`image` as 8-bit RGB in any of Pillow's modes: wider samples (16-bit, 32-bit, float)
    scaled to 0..255 by their full range, transparency (an alpha channel, a palette's or a
    grayscale/RGB `tRNS` colour) flattened onto white."""
    from PIL import Image as PILImage

    if image.mode in _WIDE:
        image = _eight_bit(image)
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        flat = PILImage.new("RGB", rgba.size, "white")
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image.convert("RGB")


def _eight_bit(image: Image) -> Image:
    """A wide one-channel image as L (LA where a `tRNS` value marks transparent pixels),
    each sample scaled from 0..full to 0..255 and rounded; NaN is black."""
    import numpy as np
    from PIL import Image as PILImage

    full = _WIDE[image.mode]
    values = np.asarray(image).astype(np.float32)  # float32: a 40 MP picture stays 160 MB
    key = image.info.get("transparency")
    clear = values == key if isinstance(key, int | float) else None
    np.nan_to_num(values, copy=False, nan=0.0, posinf=full, neginf=0.0)
    values *= 255.0 / full
    np.clip(np.rint(values, out=values), 0, 255, out=values)
    gray = PILImage.fromarray(values.astype(np.uint8))
    if clear is None:
        return gray
    alpha = PILImage.fromarray(np.where(clear, 0, 255).astype(np.uint8))
    return PILImage.merge("LA", (gray, alpha))


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
