"""The tiny tagger's (`builtin:tiny-tagger`) own answer for a picture, computed here with
transformers directly, for tests to hold the bot's tag-style prompts against: the picture
padded to a white square (as WD taggers see it), the processor's pixels, a sigmoid over the
logits, the labels above the threshold most confident first, written as a prompt writes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

__all__ = ["AS_WRITTEN", "tagger_bytes", "tagger_scores", "top_tags"]

#: Each of the tiny tagger's labels as a prompt writes it (None: a rating, never written).
AS_WRITTEN = {
    "rating:general": None,
    "rating:sensitive": None,
    "rating:questionable": None,
    "rating:explicit": None,
    "1girl": "1girl",
    "solo": "solo",
    "long_hair": "long hair",
    "blue_sky": "blue sky",
    "smile": "smile",
    "outdoors": "outdoors",
    "cherry_blossoms": "cherry blossoms",
    "school_uniform": "school uniform",
    "red_scarf": "red scarf",
    "^_^": "^_^",
    "hat_(object)": r"hat \(object\)",
    "character:hatsune_miku": "hatsune miku",
}


def _model(model_cache: Path) -> Any:
    from transformers import AutoModelForImageClassification

    from engine.tiny_caption import caption_folder

    folder = caption_folder("builtin:tiny-tagger", model_cache)
    return AutoModelForImageClassification.from_pretrained(folder, local_files_only=True)


def tagger_bytes(model_cache: Path) -> int:
    """The bytes of the tiny tagger's weights (float32, as on a CPU)."""
    return sum(p.numel() * p.element_size() for p in _model(model_cache).parameters())


def tagger_scores(model_cache: Path, image: Image.Image) -> dict[str, float]:
    """The tiny tagger's confidence in each of its labels for `image`."""
    import torch
    from PIL import ImageOps
    from transformers import AutoImageProcessor

    from engine.tiny_caption import caption_folder

    folder = caption_folder("builtin:tiny-tagger", model_cache)
    model = _model(model_cache)
    processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    assert model.config.problem_type == "multi_label_classification"
    side = max(image.size)
    square = ImageOps.pad(image.convert("RGB"), (side, side), color=(255, 255, 255))
    with torch.no_grad():
        logits = model(**processor(images=square, return_tensors="pt")).logits[0]
    return {model.config.id2label[i]: float(s) for i, s in enumerate(torch.sigmoid(logits))}


def top_tags(model_cache: Path, image: Image.Image, threshold: float = 0.35) -> list[str]:
    """The tags above `threshold`, ratings left out, most confident first, as written."""
    scores = tagger_scores(model_cache, image)
    ranked = sorted(scores, key=lambda label: -scores[label])
    return [AS_WRITTEN[t] for t in ranked if scores[t] > threshold and AS_WRITTEN[t] is not None]  # type: ignore[misc]
