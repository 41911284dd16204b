"""Tiny LoRA files for the tiny models, in the format diffusers' `load_lora_weights` reads.

Built with peft the way diffusers' training scripts save theirs (`get_peft_model_state_dict`,
`convert_state_dict_to_diffusers`, `save_lora_weights`), so loading them exercises the same
path as a LoRA downloaded from the hub. Their weights are random but never zero (peft's
default init makes B = 0, a LoRA with no effect), so an active LoRA visibly changes images.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import torch

__all__ = ["TARGET_MODULES", "TEXT_TARGET_MODULES", "make_tiny_lora"]

#: The attention projections that LoRAs for Stable Diffusion usually train.
TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")
#: The same in CLIP's text encoder.
TEXT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj")

_ADAPTER = "testkit_tiny"


def make_tiny_lora(
    unet_or_pipe: Any, path: Path, *, seed: int, rank: int = 4, text_encoder: bool = False
) -> Path:
    """Save a LoRA of `rank` for `unet_or_pipe`'s UNet to `path` (a `.safetensors`), with
    weights for the pipeline's text encoder too when `text_encoder` (it needs a pipeline).

    The same `seed` gives the same weights. The given modules are not touched (copies are
    adapted), nor is torch's global random state.
    """
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import get_peft_model_state_dict

    generator = torch.Generator().manual_seed(seed)
    unet = _adapted(getattr(unet_or_pipe, "unet", unet_or_pipe), TARGET_MODULES, rank, generator)
    layers: dict[str, Any] = {
        "unet_lora_layers": convert_state_dict_to_diffusers(
            get_peft_model_state_dict(unet, adapter_name=_ADAPTER)
        )
    }
    if text_encoder:
        encoder = _adapted(unet_or_pipe.text_encoder, TEXT_TARGET_MODULES, rank, generator)
        layers["text_encoder_lora_layers"] = convert_state_dict_to_diffusers(
            get_peft_model_state_dict(encoder, adapter_name=_ADAPTER)
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(str(path.parent), weight_name=path.name, **layers)
    return path


def _adapted(
    model: Any, targets: tuple[str, ...], rank: int, generator: torch.Generator
) -> torch.nn.Module:
    """A copy of `model` with a LoRA adapter whose weights come from `generator`.

    peft's own `inject_adapter_in_model`, not the models' `add_adapter`: transformers 5 wants
    peft >= 0.22 for that one, while loading (what is under test) works with older peft.
    """
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(
        r=rank,
        lora_alpha=rank,  # scale 1: the file needs no alpha for the loader to read it right
        target_modules=list(targets),
        init_lora_weights=False,
    )
    with torch.random.fork_rng(devices=[]):  # the layers' own init draws from the global RNG
        adapted = inject_adapter_in_model(config, copy.deepcopy(model), adapter_name=_ADAPTER)
    with torch.no_grad():
        for name, param in sorted(adapted.named_parameters()):
            if f".{_ADAPTER}." in name:  # lora_A: (rank, in), lora_B: (out, rank)
                values = torch.randn(param.shape, generator=generator) / math.sqrt(param.shape[1])
                param.copy_(values.to(param.dtype))
    return adapted
