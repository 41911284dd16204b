"""Tiny random-weight helper models of the canvas, built in code for offline runs and tests:
`builtin:tiny-clipseg` (a CLIPSeg text-prompted segmentation model, the tiny models' CLIP
tokenizer, saved as a transformers folder), `builtin:tiny-esrgan` (an ESRGAN generator,
RRDBNet-shaped, 4x, saved as a `.pth` state dict in the original ESRGAN's key layout, which
spandrel recognises) and `builtin:tiny-face-detector` (a YOLOS object detector with one
label, "face", whose heads are biased so that it finds a box of about a third of the picture
near its middle, scored near 0.88: a test picture always has one "face"; and
`builtin:tiny-hand-detector`, the same with one "hand" in the lower left). Each is saved once
to the cache folder and loaded back the way a real one is (`from_pretrained`, spandrel's
`ModelLoader`). Their outputs are noise, by design.
"""

from __future__ import annotations

import os
from pathlib import Path

from .tiny_parts import clip_tokenizer, tiny_vision_config

__all__ = [
    "VISION_BUILTINS",
    "build_clipseg",
    "build_esrgan",
    "build_face_detector",
    "build_hand_detector",
    "vision_builtin",
]


def build_clipseg(root: Path, *, seed: int = 7) -> None:
    """CLIPSeg shaped like transformers' own tests: 32-wide CLIP text and vision towers (32
    pixel inputs, 8-pixel patches), a 16-wide decoder reading two of their layers."""
    import torch
    from transformers import (
        CLIPSegConfig,
        CLIPSegForImageSegmentation,
        CLIPSegProcessor,
        ViTImageProcessor,
    )

    torch.manual_seed(seed)
    tokenizer = clip_tokenizer()
    config = CLIPSegConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config=tiny_vision_config(patch_size=8),
        projection_dim=32,
        extract_layers=(0, 1),
        reduce_dim=16,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=16,
    )
    model = CLIPSegForImageSegmentation(config).eval()
    images = ViTImageProcessor(
        do_resize=True,
        size={"height": 32, "width": 32},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    tmp = root.with_name(root.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    CLIPSegProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(tmp)
    tmp.rename(root) if not root.exists() else None


def build_esrgan(root: Path, *, seed: int = 8) -> None:
    """An ESRGAN 4x generator (RRDBNet: 8 features, one RRDB block of growth 32), its weights
    small and random, written as the original ESRGAN's `model.*` keys to `root/model.pth`."""
    import torch

    torch.manual_seed(seed)
    nf, gc = 8, 32  # spandrel reads the growth as 32 (the original ESRGAN's)

    def conv(name: str, cin: int, cout: int) -> dict[str, torch.Tensor]:
        return {
            f"{name}.weight": torch.randn(cout, cin, 3, 3) * 0.05,
            f"{name}.bias": torch.zeros(cout),
        }

    state: dict[str, torch.Tensor] = {}
    state |= conv("model.0", 3, nf)
    for r in range(1, 4):  # the RRDB's three dense blocks of five convolutions
        for c in range(1, 6):
            cin = nf + (c - 1) * gc
            cout = nf if c == 5 else gc
            state |= conv(f"model.1.sub.0.RDB{r}.conv{c}.0", cin, cout)
    state |= conv("model.1.sub.1", nf, nf)  # the trunk's last convolution
    state |= conv("model.3", nf, nf)  # upsample x2
    state |= conv("model.6", nf, nf)  # upsample x2
    state |= conv("model.8", nf, nf)  # HR convolution
    state |= conv("model.10", nf, 3)
    tmp = root.with_name(root.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    torch.save(state, tmp / "model.pth")
    tmp.rename(root) if not root.exists() else None


def build_face_detector(root: Path, *, seed: int = 9) -> None:
    """The tiny face detector (`_build_detector`): a box near the middle."""
    _build_detector(root, "face", seed=seed)


def build_hand_detector(root: Path, *, seed: int = 10) -> None:
    """The tiny hand detector (`_build_detector`): a box in the lower left quarter, where
    the face detector's box is not, so a test sees which one was fixed."""
    _build_detector(root, "hand", seed=seed, centre=(0.22, 0.75), side=0.25)


def _build_detector(
    root: Path,
    label: str,
    *,
    seed: int,
    centre: tuple[float, float] | None = None,
    side: float = 0.3,
) -> None:
    """A YOLOS detector shaped like transformers' own tests (32 wide, 8-pixel patches, two
    layers, three detection tokens) with one `label`. Random weights would score every box
    about 0.5 and place it anywhere: the last layers of both heads are scaled down and
    biased, so the scores sit near 0.88 (the default threshold passes them, 0.95 does not)
    and the boxes are about `side` of each side, near the middle (or, with `centre`, there:
    the box head's weights scaled down too, so it stays put)."""
    import math

    import torch
    from transformers import YolosConfig, YolosForObjectDetection, YolosImageProcessor

    torch.manual_seed(seed)
    config = YolosConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        image_size=[32, 32],
        patch_size=8,
        num_detection_tokens=3,
        id2label={0: label},
        label2id={label: 0},
    )
    model = YolosForObjectDetection(config).eval()
    with torch.no_grad():
        classes = model.class_labels_classifier.layers[-1]
        classes.weight.mul_(0.05)
        classes.bias.copy_(torch.tensor([2.0, 0.0]))  # softmax: the label ~0.88, "no object"
        boxes = model.bbox_predictor.layers[-1]
        size = math.log(side / (1 - side))  # sigmoid -> `side` of each side
        x, y = (0.0, 0.0) if centre is None else (math.log(c / (1 - c)) for c in centre)
        if centre is not None:
            boxes.weight.mul_(0.05)
        boxes.bias.copy_(torch.tensor([x, y, size, size]))  # centre x, y; width, height
    images = YolosImageProcessor(size={"shortest_edge": 32, "longest_edge": 64})
    tmp = root.with_name(root.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    images.save_pretrained(tmp)
    tmp.rename(root) if not root.exists() else None


#: Builtin name -> (its builder, the file or folder a loader reads in its folder).
VISION_BUILTINS = {
    "builtin:tiny-clipseg": (build_clipseg, ""),
    "builtin:tiny-esrgan": (build_esrgan, "model.pth"),
    "builtin:tiny-face-detector": (build_face_detector, ""),
    "builtin:tiny-hand-detector": (build_hand_detector, ""),
}


def vision_builtin(name: str, cache_dir: Path | None) -> Path:
    """The saved folder (or file) of a builtin helper model, built on first use."""
    from .tiny import default_cache_dir

    if name not in VISION_BUILTINS:
        known = ", ".join(VISION_BUILTINS)
        raise ValueError(f"unknown builtin helper model {name!r}; known: {known}")
    build, inside = VISION_BUILTINS[name]
    root = (cache_dir or default_cache_dir()) / f"{name.replace(':', '-')}-v1"
    if not root.exists():
        root.parent.mkdir(parents=True, exist_ok=True)
        build(root)
    return root / inside if inside else root
