"""imagine-bot's generation engine: batched Stable Diffusion on one GPU.

Importing this package does not import torch; `Engine.start()` does, on its worker thread.
The engine knows nothing of Discord: it speaks the frozen dataclasses below.
"""

from .catalog import ModelInfo
from .client import Checked, EngineClient
from .config import DEFAULT_MODEL, SCHEDULERS, EngineConfig, Limits, LoraSpec, ModelSpec
from .derived import (
    STRONG_VARIATION,
    SUBTLE_VARIATION,
    UPSCALE_FACTOR,
    UPSCALE_STRENGTH,
    upscale_request,
    upscaled_size,
    variation_request,
)
from .errors import (
    Busy,
    Cancelled,
    EngineDead,
    EngineError,
    EngineUnavailable,
    GenerationFailed,
    InvalidRequest,
    ShuttingDown,
)
from .job import Job, JobState, Progress
from .lora_tags import LoraSet, extract_loras
from .pngmeta import Parameters, format_parameters, parse_parameters, read_parameters
from .profile import ModelProfile
from .request import (
    DEFAULT_STRENGTH,
    MAX_SEED,
    MAX_STRENGTH,
    MIN_STRENGTH,
    BatchKey,
    ImageRequest,
    clean_text,
    model_text,
)
from .result import GeneratedImage, GenerationResult
from .service import Engine
from .sizing import ASPECT_RATIOS, Shape
from .stats import CallRecord, EngineStats

__all__ = [
    "ASPECT_RATIOS",
    "DEFAULT_MODEL",
    "DEFAULT_STRENGTH",
    "MAX_SEED",
    "MAX_STRENGTH",
    "MIN_STRENGTH",
    "SCHEDULERS",
    "STRONG_VARIATION",
    "SUBTLE_VARIATION",
    "UPSCALE_FACTOR",
    "UPSCALE_STRENGTH",
    "BatchKey",
    "Busy",
    "CallRecord",
    "Cancelled",
    "Checked",
    "Engine",
    "EngineClient",
    "EngineConfig",
    "EngineDead",
    "EngineError",
    "EngineStats",
    "EngineUnavailable",
    "GeneratedImage",
    "GenerationFailed",
    "GenerationResult",
    "ImageRequest",
    "InvalidRequest",
    "Job",
    "JobState",
    "Limits",
    "LoraSet",
    "LoraSpec",
    "ModelInfo",
    "ModelProfile",
    "ModelSpec",
    "Parameters",
    "Progress",
    "Shape",
    "ShuttingDown",
    "clean_text",
    "extract_loras",
    "format_parameters",
    "model_text",
    "parse_parameters",
    "read_parameters",
    "upscale_request",
    "upscaled_size",
    "variation_request",
]
