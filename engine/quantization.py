"""`[models.<name>] quantize`: the denoiser's weights in 8 or 4 bits through diffusers'
quantization configs (torchao, bitsandbytes), or one line saying why it cannot be.

Runs on the engine's worker thread only (torch).
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch

from .devices import device_name

__all__ = [
    "pipeline_quantization",
    "quantization_config",
]


#: What each `quantize` mode needs installed, and the extra that installs it.
_BACKENDS = {
    "int8": ("torchao", "quantize"),
    "fp8": ("torchao", "quantize"),
    "nf4": ("bitsandbytes", "nf4"),
}


def quantization_config(mode: str, device: torch.device, dtype: torch.dtype) -> Any:
    """diffusers' quantization config of a model's denoiser for `[models.<name>] quantize`
    (None for "none"): int8 weight-only and fp8 (dynamic activations, fp8 matmuls) through
    torchao, nf4 through bitsandbytes. A one-line ValueError when the backend is not installed
    or the device cannot run it."""
    if mode == "none":
        return None
    package, extra = _BACKENDS[mode]
    if importlib.util.find_spec(package) is None:
        raise ValueError(
            f'quantize = "{mode}" needs {package}, which is not installed: '
            f'pip install "imagine-bot[{extra}]"'
        )
    if mode == "fp8":
        capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
        if capability is None or capability < (8, 9):
            raise ValueError(
                f'quantize = "fp8" needs an NVIDIA GPU with fp8 (compute capability 8.9 or '
                f"later: Ada, Hopper, Blackwell), not {device_name(device)}: use int8 or nf4"
            )
    if mode == "nf4" and device.type != "cuda":
        raise ValueError(
            f'quantize = "nf4" needs an NVIDIA GPU (bitsandbytes), not {device_name(device)}: '
            "use int8"
        )
    from diffusers import BitsAndBytesConfig, TorchAoConfig

    if mode == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype
        )
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig,
        Int8WeightOnlyConfig,
    )

    if mode == "fp8":
        return TorchAoConfig(Float8DynamicActivationFloat8WeightConfig())
    return TorchAoConfig(Int8WeightOnlyConfig())


def pipeline_quantization(source: str, quantization: Any, kwargs: dict[str, Any]) -> Any:
    """A pipeline-level config quantizing only the denoiser of `source`'s family."""
    from diffusers import DiffusionPipeline
    from diffusers.quantizers import PipelineQuantizationConfig

    from .families import FAMILIES

    try:
        class_name = DiffusionPipeline.load_config(source, **kwargs).get("_class_name", "")
    except Exception:  # unreadable: from_pretrained says why, once
        class_name = ""
    family = next((f for f in FAMILIES if class_name in f.pipelines), None)
    names = [family.denoiser] if family else sorted({f.denoiser for f in FAMILIES})
    return PipelineQuantizationConfig(quant_mapping={name: quantization for name in names})
