"""Which device and dtype the engine runs on (`[engine] device`, `dtype`).

Runs on the engine's worker thread only (torch).
"""

from __future__ import annotations

import torch

__all__ = [
    "device_name",
    "pick_device",
    "pick_dtype",
]


def pick_device(wanted: str) -> torch.device:
    """`auto` takes CUDA, then Apple's MPS, then the CPU."""
    if wanted != "auto":
        return torch.device(wanted)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(wanted: str, device: torch.device, half: str = "float16") -> torch.dtype:
    """A half-precision dtype on GPUs (half the memory, tensor cores), fp32 on the CPU where
    half precision is slow. `half` is the model family's: float16 for SD's UNets, bfloat16
    for the diffusion transformers trained in it (FLUX.1 in float16 overflows to NaN), on a
    CUDA GPU that has it."""
    if wanted != "auto":
        return getattr(torch, wanted)
    if device.type == "cuda" and half == "bfloat16":
        supported = not torch.cuda.is_available() or torch.cuda.is_bf16_supported()
        return torch.bfloat16 if supported else torch.float16
    return torch.float16 if device.type in {"cuda", "mps"} else torch.float32


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({device})"
    return f"the {device.type.upper()}"
