"""Tiny LoRA files for the tiny models, in the format diffusers' `load_lora_weights` reads.

For any family: the denoiser is the pipeline's UNet (SD, SDXL) or transformer (FLUX.1, Chroma
and the other diffusion transformers), whose attention projections (`to_q`, `to_k`, `to_v`,
`to_out.0`) every diffusers model names alike. Built with peft the way diffusers' training
scripts save theirs (`get_peft_model_state_dict`, `convert_state_dict_to_diffusers`,
`save_lora_weights`), so loading them exercises the same path as a LoRA downloaded from the
hub. Their weights are random but never zero (peft's
default init makes B = 0, a LoRA with no effect), so an active LoRA visibly changes images.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import torch

__all__ = ["TARGET_MODULES", "TEXT_TARGET_MODULES", "make_tiny_lora"]

#: The attention projections that LoRAs usually train (named alike in every diffusers model).
TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")
#: The same in CLIP's text encoder.
TEXT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj")

_ADAPTER = "testkit_tiny"


def make_tiny_lora(
    denoiser_or_pipe: Any, path: Path, *, seed: int, rank: int = 4, text_encoder: bool = False
) -> Path:
    """Save a LoRA of `rank` for the denoiser of `denoiser_or_pipe` (a pipeline, or its UNet or
    transformer alone) to `path` (a `.safetensors`), with weights for the pipeline's CLIP text
    encoder too when `text_encoder` (it needs a pipeline).

    The file is written by the pipeline's own `save_lora_weights` (for a lone module: SD's for
    a UNet, FLUX.1's for a transformer, whose `transformer.*` names every transformer family's
    loader reads). The same `seed` gives the same weights. The given modules are not touched
    (copies are adapted), nor is torch's global random state.
    """
    from diffusers import FluxPipeline, StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import get_peft_model_state_dict

    generator = torch.Generator().manual_seed(seed)
    if isinstance(denoiser_or_pipe, torch.nn.Module):  # a UNet or a transformer alone
        denoiser = denoiser_or_pipe
        kind = "unet" if type(denoiser).__name__.startswith("UNet") else "transformer"
    else:
        kind = "unet" if getattr(denoiser_or_pipe, "unet", None) is not None else "transformer"
        denoiser = getattr(denoiser_or_pipe, kind)
    saver: Any = type(denoiser_or_pipe)
    if not hasattr(saver, "save_lora_weights"):
        saver = StableDiffusionPipeline if kind == "unet" else FluxPipeline
    adapted = _adapted(denoiser, TARGET_MODULES, rank, generator)
    layers: dict[str, Any] = {
        f"{kind}_lora_layers": convert_state_dict_to_diffusers(
            get_peft_model_state_dict(adapted, adapter_name=_ADAPTER)
        )
    }
    if text_encoder:
        encoder = _adapted(denoiser_or_pipe.text_encoder, TEXT_TARGET_MODULES, rank, generator)
        layers["text_encoder_lora_layers"] = convert_state_dict_to_diffusers(
            get_peft_model_state_dict(encoder, adapter_name=_ADAPTER)
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    saver.save_lora_weights(str(path.parent), weight_name=path.name, **layers)
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
