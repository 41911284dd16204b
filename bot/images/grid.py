"""The 2×2 grid a four-image result is posted as (the habit Midjourney made).

Each tile is a whole image, scaled down so the grid stays a small attachment; the full-size
images are kept by `ImageStore` for Upscale and Vary. The grid's PNG carries the first
image's parameters plus a `Grid` field naming every seed, so a saved grid still tells how
to make its images again. Pure Pillow: callers run it off the event loop.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Sequence

from PIL import Image

from engine import GeneratedImage, read_parameters
from engine.pngmeta import Parameters, encode_png

__all__ = ["GRID_IMAGES", "MAX_TILE", "grid_png"]

#: Images a grid holds.
GRID_IMAGES = 4
#: The longest side of one tile, in pixels (a 1024² grid at most).
MAX_TILE = 512


def grid_png(images: Sequence[GeneratedImage]) -> bytes:
    """One PNG with the four images in reading order (1 2 / 3 4)."""
    if len(images) != GRID_IMAGES:
        raise ValueError(f"a grid holds {GRID_IMAGES} images, not {len(images)}")
    tiles = []
    for image in images:
        with Image.open(io.BytesIO(image.png)) as opened:
            tile = opened.convert("RGB")
        scale = min(1.0, MAX_TILE / max(tile.size))
        if scale < 1.0:
            size = (max(1, round(tile.width * scale)), max(1, round(tile.height * scale)))
            tile = tile.resize(size, Image.Resampling.LANCZOS)
        tiles.append(tile)
    width = max(t.width for t in tiles)
    height = max(t.height for t in tiles)
    grid = Image.new("RGB", (2 * width, 2 * height), "black")
    for n, tile in enumerate(tiles):
        grid.paste(tile, ((n % 2) * width, (n // 2) * height))
    first = read_parameters(images[0].png)
    seeds = ", ".join(str(image.seed) for image in images)
    params = first or Parameters("", "", 0, "", 0.0, images[0].seed, width, height, "")
    params = dataclasses.replace(params, extra=(*params.extra, ("Grid", f"2x2, seeds {seeds}")))
    return encode_png(grid, params)
