"""The canvas's helper models, beside the image models: a text-prompted segmentation model
(CLIPSeg, `[region] model`: "the hat" -> where the hat is) and a GAN upscaler (an ESRGAN-family
file, `[upscale] model`, read by spandrel, which knows the common `.pth`/`.safetensors`
upscaler layouts).

Each is loaded on first use and run on the engine's worker thread, between ticks: the GPU
has one owner (`worker.Worker`). Builtins (`builtin:tiny-clipseg`, `builtin:tiny-esrgan`:
`tiny_vision.py`) run offline.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import EngineConfig
from .devices import pick_device, pick_dtype
from .errors import EngineError
from .tiny_vision import VISION_BUILTINS, vision_builtin

__all__ = ["Helpers"]

log = logging.getLogger(__name__)


class Helpers:
    """The helper models of one engine; not thread-safe (the worker thread owns them)."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self._segmenter: tuple[Any, Any] | None = None
        self._upscaler: Any = None

    def _where(self, source: str) -> str:
        if source in VISION_BUILTINS:
            return str(vision_builtin(source, self.config.cache_dir))
        return source

    def segment(self, image: Any, words: str) -> np.ndarray:
        """How much each part of `image` is what `words` name, 0..1, at the model's own
        resolution (`canvas.region_mask` makes the mask)."""
        if self._segmenter is None:
            from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

            source = self._where(self.config.region_model)
            log.info("loading the region model %s", self.config.region_model)
            device = pick_device(self.config.device)
            model = CLIPSegForImageSegmentation.from_pretrained(source).to(device).eval()
            self._segmenter = (model, CLIPSegProcessor.from_pretrained(source))
        model, processor = self._segmenter
        inputs = processor(text=[words], images=[image.convert("RGB")], return_tensors="pt")
        with torch.inference_mode():
            logits = model(**inputs.to(model.device)).logits
        return torch.sigmoid(logits.float()).reshape(logits.shape[-2:]).cpu().numpy()

    def upscale(self, image: Any) -> Any:
        """`image` enlarged by the GAN (its own factor: 4 for most ESRGANs), as RGB."""
        from PIL import Image

        if self._upscaler is None:
            try:
                import spandrel
            except ImportError as exc:  # spandrel, or the torchvision it imports
                raise EngineError(
                    f"The GAN upscaler needs spandrel and a torchvision matching torch "
                    f"({exc}): pip install 'imagine-bot[upscale]'"
                ) from exc

            source = Path(self._where(self.config.upscale_model)).expanduser()
            log.info("loading the upscaler %s", self.config.upscale_model)
            model = spandrel.ModelLoader().load_from_file(source)
            if not isinstance(model, spandrel.ImageModelDescriptor) or model.purpose != "SR":
                raise ValueError(f"{source} is not an upscaler ({model.architecture.name})")
            device = pick_device(self.config.device)
            dtype = pick_dtype(self.config.dtype, device)
            if dtype != torch.float32 and not model.supports_half:
                dtype = torch.float32
            self._upscaler = model.to(device=device, dtype=dtype).eval()
        model = self._upscaler
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        tensor = torch.from_numpy(pixels).permute(2, 0, 1)[None]
        with torch.inference_mode():
            out = model(tensor.to(device=model.device, dtype=model.dtype))
        array = out[0].float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
        return Image.fromarray(np.rint(array * 255).astype(np.uint8))
