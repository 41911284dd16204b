"""The canvas's helper models in the bot's config: `[region]`, `[upscale]` and `[fix]`, each
a table of its own for the reader, folded into `[engine]`'s fields (the engine loads them).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from engine import EngineConfig

__all__ = ["FixSettings", "RegionSettings", "UpscaleSettings", "canvas_models"]


@dataclass(frozen=True, slots=True)
class RegionSettings:
    """`[region]`: the text-prompted segmentation model of Vary (Region) (a CLIPSeg hub id
    or folder, or builtin:tiny-clipseg); it becomes `[engine]`'s `region_model`."""

    model: str = EngineConfig.region_model


@dataclass(frozen=True, slots=True)
class UpscaleSettings:
    """`[upscale]`: the GAN upscaler file (ESRGAN family, read by spandrel: the `upscale`
    extra), or builtin:tiny-esrgan; empty: upscales are resized, then refined. It becomes
    `[engine]`'s `upscale_model`."""

    model: str = ""


@dataclass(frozen=True, slots=True)
class FixSettings:
    """`[fix]`: the face fix's detector (a transformers object-detection hub id or folder, a
    DETR or YOLOS face fine-tune, or builtin:tiny-face-detector; empty: no Fix faces), the
    hand fix's (`hands_detector`, the same kind fine-tuned on hands, or
    builtin:tiny-hand-detector; empty: no Fix hands) and the score a box needs. They become
    `[engine]`'s `fix_detector`, `fix_hands_detector` and `fix_threshold`."""

    detector: str = ""
    threshold: float = 0.5  # EngineConfig.fix_threshold
    hands_detector: str = ""  # EngineConfig.fix_hands_detector

    def __post_init__(self) -> None:
        if not (isinstance(self.threshold, int | float) and 0 < self.threshold < 1):
            raise ValueError(f"threshold must be between 0 and 1, not {self.threshold}")


def canvas_models(sections: dict[str, Any], path: Path | None) -> None:
    """`[region] model`, `[upscale] model` and `[fix]` as the engine's `region_model`,
    `upscale_model`, `fix_detector` and `fix_threshold` (a file or folder relative to the
    config file made absolute)."""
    region = sections.pop("region", None)
    upscale = sections.pop("upscale", None)
    fix = sections.pop("fix", None)
    if region is None and upscale is None and fix is None:
        return
    engine = sections.get("engine", EngineConfig())
    changes: dict[str, Any] = {}
    if region is not None:
        changes["region_model"] = region.model
    if upscale is not None:
        changes["upscale_model"] = _near(upscale.model, path)
    if fix is not None:
        changes["fix_detector"] = _near(fix.detector, path)
        changes["fix_hands_detector"] = _near(fix.hands_detector, path)
        changes["fix_threshold"] = float(fix.threshold)
    sections["engine"] = replace(engine, **changes)


def _near(model: str, path: Path | None) -> str:
    """`model`, made absolute when it is a file or folder relative to the config file."""
    near = path.parent / Path(model).expanduser() if path is not None and model else None
    if near is not None and not Path(model).expanduser().is_absolute() and near.exists():
        return str(near.resolve())
    return model
