"""Four candidate prompts for a picture (`/describe`, `imagine-bot describe`), from an
image-to-text model through transformers: Florence-2 (`[describe] model`, native in
transformers 5) asked for its detailed caption.

Four candidates by beam search: four beams, each returned (`num_return_sequences=4`), best
first. Beam search is deterministic and draws no random numbers (sampling would share
torch's global generator with every other thread of the process); a repeated caption is
dropped and eight beams tried once more for the missing ones.

Runs on the describer's own thread (`worker.Worker` owns it), never on the event loop and
never on the pipelines' worker thread: a caption takes a few hundred milliseconds on a GPU,
which between two ticks would hold every running image back, while on its own thread it
overlaps them (torch releases the GIL in its kernels). The captioning model is a model of
its own, with this thread as its one owner, as the pipelines have theirs.

Tag-style prompts (danbooru tags for anime models) come from a tagger instead (`tagger.py`,
`[describe] tagger`), on the same thread.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from .config import EngineConfig
from .devices import pick_device, pick_dtype
from .request import clean_text
from .tiny_caption import CAPTION_MODELS, caption_folder

__all__ = ["CANDIDATES", "TASK", "Describer", "pretrained_source"]

log = logging.getLogger(__name__)

#: Candidate prompts per picture.
CANDIDATES = 4
#: Florence-2's task: a caption of a sentence or two, prompt-sized.
TASK = "<DETAILED_CAPTION>"
#: Tokens one candidate may take (a prompt's 75, and room for the caption to end).
MAX_NEW_TOKENS = 96


class Describer:
    """The captioning model of `config.describe.model`, loaded on first use; not thread-safe
    (its one thread calls it)."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.source = config.describe.model
        self._model: Any = None
        self._processor: Any = None

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self) -> int:
        """Load the model on the engine's device; the bytes its weights take there."""
        from transformers import AutoModelForImageTextToText, AutoProcessor

        device = pick_device(self.config.device)
        dtype = pick_dtype(self.config.dtype, device)
        source, extra = pretrained_source(self.source, self.config)
        log.info("loading describe model %s on %s (%s)", self.source, device, dtype)
        extra["trust_remote_code"] = False  # a hub model's own code is refused, never asked
        self._processor = AutoProcessor.from_pretrained(source, **extra)
        model = AutoModelForImageTextToText.from_pretrained(source, dtype=dtype, **extra)
        self._model = model.to(device).eval()
        return sum(p.numel() * p.element_size() for p in self._model.parameters())

    def unload(self) -> None:
        self._model = self._processor = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def describe(self, picture: Any) -> list[str]:
        """Up to four distinct candidate prompts for `picture` (a Pillow image), best first."""
        assert self._model is not None, "describe() before load()"
        candidates = self._captions(picture, CANDIDATES)
        if len(candidates) < CANDIDATES:  # beams that read the same once decoded
            candidates = list(dict.fromkeys([*candidates, *self._captions(picture, 8)]))
        return candidates[:CANDIDATES]

    def _captions(self, picture: Any, beams: int) -> list[str]:
        model, processor = self._model, self._processor
        task = TASK if model.config.model_type == "florence2" else None
        inputs = processor(images=picture.convert("RGB"), text=task, return_tensors="pt")
        inputs = inputs.to(model.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        with torch.inference_mode():
            out = model.generate(
                **inputs,
                num_beams=beams,
                num_return_sequences=beams,
                max_new_tokens=MAX_NEW_TOKENS,
                no_repeat_ngram_size=3,  # as Florence-2's own generation config
                do_sample=False,
            )
        texts = processor.batch_decode(out, skip_special_tokens=True)
        return list(dict.fromkeys(t for t in map(clean_text, texts) if t))


def pretrained_source(source: str, config: EngineConfig) -> tuple[str, dict[str, Any]]:
    """The folder or hub id to load `source` (a builtin, a folder or a hub id) from, and
    `from_pretrained`'s options: a builtin is built once into the cache, a hub model goes to
    the cache's hub folder."""
    if source in CAPTION_MODELS:
        return str(caption_folder(source, config.cache_dir)), {"local_files_only": True}
    if Path(source).expanduser().is_dir():
        return str(Path(source).expanduser()), {"local_files_only": True}
    extra: dict[str, Any] = {}
    if config.cache_dir is not None:
        extra["cache_dir"] = str(config.cache_dir / "hub")
    return source, extra
