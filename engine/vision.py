"""The canvas's helper models, beside the image models: a text-prompted segmentation model
(CLIPSeg, `[region] model`: "the hat" -> where the hat is), a GAN upscaler (an ESRGAN-family
file, `[upscale] model`, read by spandrel, which knows the common `.pth`/`.safetensors`
upscaler layouts) and the face fix's detector (`[fix] detector`: any transformers object
detection model, DETR or YOLOS fine-tuned on faces).

Each is loaded on first use and run on the engine's worker thread, between ticks: the GPU
has one owner (`worker.Worker`). Builtins (`builtin:tiny-clipseg`, `builtin:tiny-esrgan`,
`builtin:tiny-face-detector`: `tiny_vision.py`) run offline.
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

__all__ = ["MAX_FACES", "Box", "Helpers"]

log = logging.getLogger(__name__)

#: A detected box, in pixels: left, top, right, bottom.
Box = tuple[int, int, int, int]
#: The face fix fixes at most this many faces in a picture (the highest scores).
MAX_FACES = 16


class Helpers:
    """The helper models of one engine; not thread-safe (the worker thread owns them)."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self._segmenter: tuple[Any, Any] | None = None
        self._upscaler: Any = None
        # Per target ("faces", "hands"): the model, its processor, the labels that count.
        self._detectors: dict[str, tuple[Any, Any, frozenset[int] | None]] = {}

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

    def detect(self, image: Any, target: str = "faces") -> list[Box]:
        """The faces (or with `target` "hands", the hands) in `image` (`[fix] detector`,
        `[fix] hands_detector`): boxes scoring at least `[fix] threshold`, best first, at
        most `MAX_FACES`, clipped to the picture (tiny ones and repeats of one box dropped).
        A model whose labels name faces (hands) counts only those; one without such labels,
        all of them."""
        if target not in self._detectors:
            from transformers import AutoImageProcessor, AutoModelForObjectDetection

            name = self.config.fix_detectors[target]
            source = self._where(name)
            log.info("loading the %s detector %s", target.removesuffix("s"), name)
            device = pick_device(self.config.device)
            model = AutoModelForObjectDetection.from_pretrained(source).to(device).eval()
            labels = model.config.id2label or {}
            word = target.removesuffix("s")
            wanted = frozenset(i for i, label in labels.items() if word in str(label).lower())
            processor = AutoImageProcessor.from_pretrained(source)
            self._detectors[target] = (model, processor, wanted or None)
        model, processor, wanted = self._detectors[target]
        rgb = image.convert("RGB")
        inputs = processor(images=[rgb], return_tensors="pt")
        with torch.inference_mode():
            outputs = model(**inputs.to(model.device))
        found = processor.post_process_object_detection(
            outputs, threshold=self.config.fix_threshold, target_sizes=[(rgb.height, rgb.width)]
        )[0]
        scored = []
        for score, label, box in zip(
            found["scores"].tolist(), found["labels"].tolist(), found["boxes"].tolist(), strict=True
        ):
            x1, y1, x2, y2 = (round(v) for v in box)
            x1, x2 = max(0, x1), min(rgb.width, x2)
            y1, y2 = max(0, y1), min(rgb.height, y2)
            if (wanted is None or label in wanted) and x2 - x1 >= 2 and y2 - y1 >= 2:
                scored.append((score, (x1, y1, x2, y2)))
        scored.sort(key=lambda pair: -pair[0])
        kept: list[Box] = []
        for _, box in scored:  # the same face found twice (DETR's queries overlap) is one
            if len(kept) < MAX_FACES and all(_overlap(box, other) < 0.5 for other in kept):
                kept.append(box)
        return kept


def _overlap(a: Box, b: Box) -> float:
    """Intersection over union of two boxes."""
    width = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    both = width * height
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - both
    return both / area if area else 0.0
