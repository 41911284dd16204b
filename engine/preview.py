"""A cheap preview of half-denoised latents: a fixed linear map from latent channels to RGB.

No extra model and well under a millisecond: good enough for users to watch their image
take shape. Factors are the widely used approximations for SD 1.x/2.x and SDXL latents; for
the other families' latents (16 channels and more) the preview shows the latents' first
three principal components: the layout and its edges take shape, the colours are not the
final ones.
"""

from __future__ import annotations

import torch
from PIL import Image

__all__ = ["latents_to_preview"]

_SD = torch.tensor(
    [
        [0.3512, 0.2297, 0.3227],
        [0.3250, 0.4974, 0.2350],
        [-0.2829, 0.1762, 0.2721],
        [-0.2120, -0.2616, -0.7177],
    ]
)
_SDXL = torch.tensor(
    [
        [0.3651, 0.4232, 0.4341],
        [-0.2533, -0.0042, 0.1068],
        [0.1076, 0.1111, -0.0362],
        [-0.3165, -0.2492, -0.2188],
    ]
)
_SDXL_BIAS = torch.tensor([0.1084, -0.0175, -0.0011])


def latents_to_preview(
    latents: torch.Tensor, family: str, max_side: int = 256
) -> Image.Image | None:
    """RGB preview of one sample's latents `(channels, h, w)`, or None for other shapes."""
    if latents.ndim != 3 or latents.shape[0] < 3:
        return None
    lat = latents.detach().float().cpu()
    if lat.shape[0] == 4 and family in ("sd", "sdxl"):
        factors, bias = (_SDXL, _SDXL_BIAS) if family == "sdxl" else (_SD, torch.zeros(3))
        rgb = torch.einsum("chw,cr->hwr", lat, factors) + bias
        rgb = (rgb + 1.0) / 2.0
    else:
        rgb = _principal(lat)
    rgb = rgb.clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
    image = Image.fromarray(rgb, mode="RGB")
    scale = max_side / max(image.size)
    if scale > 1:
        image = image.resize(
            (round(image.width * scale), round(image.height * scale)), Image.BILINEAR
        )
    return image


def _principal(lat: torch.Tensor) -> torch.Tensor:
    """`(h, w, 3)` in 0..1: the latents' first three principal components over the pixels,
    each stretched to its range (a family without known colour factors)."""
    channels, h, w = lat.shape
    flat = lat.reshape(channels, -1).T  # (pixels, channels)
    flat = flat - flat.mean(dim=0)
    _, _, v = torch.linalg.svd(flat, full_matrices=False)
    rgb = flat @ v[:3].T  # (pixels, 3)
    low, high = rgb.min(dim=0).values, rgb.max(dim=0).values
    rgb = (rgb - low) / (high - low).clamp_min(1e-6)
    return rgb.reshape(h, w, 3)
