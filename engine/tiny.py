"""`builtin:tiny`: a random-weight Stable Diffusion pipeline built in code, for offline runs.

Shaped like diffusers' own fast-test components (UNet ~1.4 M parameters, 64x64 images). It is
saved once to a cache folder and always loaded back through `from_pretrained`, so tests
exercise the same loading path as a real model. Its images are noise, by design.

`builtin:tiny-flagging` adds a tiny real `StableDiffusionSafetyChecker` whose concept weights
are set so it flags every image: the way to test what happens to flagged images.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .tiny_dit import DIT_BUILDERS
from .tiny_dit2 import DIT2_BUILDERS
from .tiny_inpaint import INPAINT_BUILDERS
from .tiny_parts import (
    clip_tokenizer,
    tiny_scheduler,
    tiny_text_config,
    tiny_unet,
    tiny_vae,
    tiny_vision_config,
)

if TYPE_CHECKING:
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPImageProcessor

__all__ = [
    "BUILTIN_MODELS",
    "builtin_folder",
    "default_cache_dir",
    "rebuild_builtin",
]

_VERSION = 1
#: `builtin:tiny-b` has the same shape with other random weights: a second model for tests
#: and offline trials of several models (and of LoRAs made for the tiny UNet).
_SD_MODELS = ("builtin:tiny", "builtin:tiny-flagging", "builtin:tiny-b")

#: Diffusion-transformer builtins: one per other family (`tiny_dit`, `tiny_dit2`).
_DIT_MODELS: dict[str, Callable[[Path], None]] = {
    **DIT_BUILDERS,
    **DIT2_BUILDERS,
    **INPAINT_BUILDERS,  # models that only inpaint
}

#: Every builtin model: the SD ones here and the diffusion transformers.
BUILTIN_MODELS = (*_SD_MODELS, *_DIT_MODELS)


def default_cache_dir() -> Path:
    """`$IMAGINE_BOT_CACHE`, else `$XDG_CACHE_HOME/imagine-bot`, else `~/.cache/imagine-bot`."""
    if env := os.environ.get("IMAGINE_BOT_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "imagine-bot"


def builtin_folder(name: str, cache_dir: Path | None = None) -> Path:
    """Return the saved folder for a builtin model, building it on first use."""
    if name not in BUILTIN_MODELS:
        raise ValueError(f"unknown builtin model {name!r}; known: {', '.join(BUILTIN_MODELS)}")
    root = _folder(name, cache_dir)
    if not (root / "model_index.json").exists():
        root.parent.mkdir(parents=True, exist_ok=True)
        if name in _SD_MODELS:
            _build(root, flagging=name.endswith("-flagging"), seed=1 if name.endswith("-b") else 0)
        else:
            _DIT_MODELS[name](root)
    return root


def rebuild_builtin(name: str, cache_dir: Path | None = None) -> Path:
    """Build a builtin model's folder again from scratch (its cached files were damaged)."""
    shutil.rmtree(_folder(name, cache_dir), ignore_errors=True)
    return builtin_folder(name, cache_dir)


def _folder(name: str, cache_dir: Path | None) -> Path:
    return (cache_dir or default_cache_dir()) / f"{name.replace(':', '-')}-v{_VERSION}"


def _build(root: Path, *, flagging: bool, seed: int = 0) -> None:
    import torch
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextModel

    torch.manual_seed(seed)  # the same weights on every machine
    tokenizer = clip_tokenizer()
    unet = tiny_unet()
    scheduler = tiny_scheduler()
    vae = tiny_vae()
    text_encoder = CLIPTextModel(tiny_text_config(tokenizer))
    checker, extractor = _flagging_checker() if flagging else (None, None)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=checker,
        feature_extractor=extractor,
        requires_safety_checker=flagging,
    )
    tmp = root.with_name(root.name + f".tmp{os.getpid()}")
    pipe.save_pretrained(tmp)
    tmp.rename(root) if not root.exists() else None


def _flagging_checker() -> tuple[StableDiffusionSafetyChecker, CLIPImageProcessor]:
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    config = CLIPConfig(
        text_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "vocab_size": 1000,
            "bos_token_id": 998,
            "eos_token_id": 999,
            "pad_token_id": 999,
        },
        vision_config=tiny_vision_config(patch_size=4),
        projection_dim=32,
    )
    checker = StableDiffusionSafetyChecker(config).eval()
    with torch.no_grad():  # score = cosine - weight: a weight of -2 flags every image
        checker.concept_embeds_weights.fill_(-2.0)
        checker.special_care_embeds_weights.fill_(-2.0)
    extractor = CLIPImageProcessor(
        crop_size={"height": 32, "width": 32}, size={"shortest_edge": 32}
    )
    return checker, extractor
