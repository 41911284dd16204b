"""Four tag-style candidate prompts for a picture (`/describe style:tags`, `imagine-bot
describe --tags`), from a WD-style tagger through transformers (`[describe] tagger`).

The WD taggers anime models are prompted with exist in transformers' format
(`p1atdev/wd-swinv2-tagger-v3-hf`): an `AutoModelForImageClassification` whose
`problem_type` is `multi_label_classification`, its labels danbooru tags (`config.id2label`),
a sigmoid over its logits giving each tag's confidence. Ratings (`rating:general` ...
`rating:explicit`, or bare `general` ... `explicit`) say how explicit the picture is: they are
not prompt tags and never reach a prompt. Characters (`character:<name>`) are tags like any.

A tag is kept above `[describe] tag_threshold` (0.35, as the WD taggers' cards use), in order
of confidence, with its underscores as spaces as A1111's tagger writes them (a kaomoji such as
`^_^` stays as it is) and its parentheses escaped (`hat \\(object\\)`), since in a prompt they
would weigh the words. The four candidates are the kept tags, then the first three quarters,
half and quarter of them: the least sure tags go first.

The WD taggers' own image processor is remote code, which the bot never runs: when a folder's
processor cannot load without it, transformers' ViT processor reads the same settings (size,
mean, std) and the picture is given as the WD taggers were trained on it, in BGR order. Every
picture is first padded to a white square (WD's way: the tagger sees all of it, unstretched).

Runs on the describer's thread (`worker.Worker`), loaded on first use, as the describe model.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any

import torch

from .config import EngineConfig
from .describe import pretrained_source
from .devices import pick_device, pick_dtype

__all__ = ["CANDIDATES", "RATINGS", "Tagger", "prompt_tag", "tag_prompts"]

log = logging.getLogger(__name__)

#: Candidate prompts per picture.
CANDIDATES = 4
#: Danbooru's ratings: a WD tagger's labels for them, never prompt tags.
RATINGS = frozenset({"general", "sensitive", "questionable", "explicit"})
_LETTER = re.compile(r"[^\W\d_]")


def prompt_tag(label: str) -> str | None:
    """A tagger's label as a prompt writes it; None for a rating."""
    label = label.strip()
    if label.startswith("rating:") or label in RATINGS:
        return None
    label = label.removeprefix("character:")
    if _LETTER.search(label):  # a word tag; a kaomoji (`^_^`, `>_<`) keeps its underscore
        label = label.replace("_", " ")
    return re.sub(r"([()])", r"\\\1", label)


def tag_prompts(scores: dict[str, float], threshold: float) -> list[str]:
    """Up to four distinct comma-separated prompts from each label's confidence: the prompt
    tags above `threshold`, most confident first, then fewer of them."""
    ranked = sorted(scores.items(), key=lambda item: -item[1])
    tags = [t for label, s in ranked if s > threshold and (t := prompt_tag(label)) is not None]
    kept = list(dict.fromkeys(tags))
    counts = [math.ceil(len(kept) * n / CANDIDATES) for n in range(CANDIDATES, 0, -1)]
    return list(dict.fromkeys(", ".join(kept[:n]) for n in counts if n))


class Tagger:
    """The tagger of `config.describe.tagger`, loaded on first use; not thread-safe (its one
    thread calls it)."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.source = config.describe.tagger
        self._model: Any = None
        self._processor: Any = None
        self._bgr = False

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self) -> int:
        """Load the tagger on the engine's device; the bytes its weights take there."""
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        device = pick_device(self.config.device)
        dtype = pick_dtype(self.config.dtype, device)
        source, extra = pretrained_source(self.source, self.config)
        log.info("loading tagger %s on %s (%s)", self.source, device, dtype)
        extra["trust_remote_code"] = False  # refused, never asked about on a terminal
        model = AutoModelForImageClassification.from_pretrained(source, dtype=dtype, **extra)
        if model.config.problem_type not in (None, "multi_label_classification"):
            raise ValueError(
                f"{self.source} is a {model.config.problem_type} classifier, not a tagger "
                "(multi_label_classification)"
            )
        try:
            self._processor = AutoImageProcessor.from_pretrained(source, **extra)
            self._bgr = False
        except ValueError as exc:  # the WD taggers' processor: remote code, never run here
            if "trust_remote_code" not in str(exc):
                raise
            from transformers import ViTImageProcessor

            del extra["trust_remote_code"]
            self._processor = ViTImageProcessor.from_pretrained(source, **extra)
            self._bgr = True
        self._model = model.to(device).eval()
        return sum(p.numel() * p.element_size() for p in self._model.parameters())

    def unload(self) -> None:
        self._model = self._processor = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def scores(self, picture: Any) -> dict[str, float]:
        """Each label's confidence for `picture` (a Pillow image)."""
        assert self._model is not None, "scores() before load()"
        model = self._model
        square = _square(picture, bgr=self._bgr)
        inputs = self._processor(images=square, return_tensors="pt").to(model.device)
        pixels = inputs["pixel_values"].to(model.dtype)
        with torch.inference_mode():
            logits = model(pixel_values=pixels).logits[0]
        confidences = torch.sigmoid(logits.float()).tolist()
        return {model.config.id2label[i]: c for i, c in enumerate(confidences)}

    def describe(self, picture: Any) -> list[str]:
        """Up to four distinct tag-style prompts for `picture`, the most tags first."""
        return tag_prompts(self.scores(picture), self.config.describe.tag_threshold)


def _square(picture: Any, *, bgr: bool) -> Any:
    """`picture` centred on a white square as wide as its longer side, its channels in RGB
    order (or BGR: the red channel where the blue one was)."""
    from PIL import Image

    rgb = picture.convert("RGB")
    side = max(rgb.size)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(rgb, ((side - rgb.width) // 2, (side - rgb.height) // 2))
    return Image.merge("RGB", square.split()[::-1]) if bgr else square
