"""A model's scheduler and recipe (`[models.<name>] scheduler`, `clip_skip`, `prediction`,
`zero_snr`, `karras`, `guidance_rescale`), and the sampler names SD tools write in PNGs.

Runs on the engine's worker thread only.
"""

from __future__ import annotations

from typing import Any

from .config import SCHEDULERS, ModelSpec

__all__ = [
    "SAMPLERS",
    "call_extra",
    "sampler_name",
    "scheduler_for",
]


SAMPLERS = {
    "DDIMScheduler": "DDIM",
    "EulerDiscreteScheduler": "Euler",
    "EulerAncestralDiscreteScheduler": "Euler a",
    "DPMSolverMultistepScheduler": "DPM++ 2M",
    "PNDMScheduler": "PLMS",
    "LMSDiscreteScheduler": "LMS",
    "HeunDiscreteScheduler": "Heun",
    "UniPCMultistepScheduler": "UniPC",
    "LCMScheduler": "LCM",
}


def sampler_name(scheduler: object) -> str:
    """The name SD tools use for a diffusers scheduler (class name when unknown)."""
    name = type(scheduler).__name__
    return SAMPLERS.get(name, name)


def call_extra(spec: ModelSpec, family: str) -> dict[str, Any]:
    """The recipe's arguments of the stock SD/SDXL call (`scheduler_for` checked the family)."""
    extra: dict[str, Any] = {}
    if spec.clip_skip and family != "sd":  # SD's own clip_skip: the runner's embeddings
        extra["clip_skip"] = spec.clip_skip
    if spec.guidance_rescale:
        extra["guidance_rescale"] = spec.guidance_rescale
    return extra


def scheduler_for(spec: ModelSpec, pipe: Any) -> Any:
    """The model's scheduler: its own or the configured one, with the model's recipe
    (prediction type, zero terminal SNR, Karras sigmas); `ValueError` with one line for a
    recipe the model's family or scheduler cannot take."""
    import inspect

    import diffusers

    from .families import family_of

    family = family_of(pipe)
    if spec.scheduler != "default" and family.name not in ("sd", "sdxl"):
        raise ValueError(
            f"model {spec.name} is a {family.label} model: its scheduler is its own (flow "
            f"matching); remove scheduler = {spec.scheduler!r}"
        )
    if spec.recipe and family.name not in ("sd", "sdxl"):
        raise ValueError(
            f"model {spec.name} is a {family.label} model: {', '.join(spec.recipe)} apply to "
            "Stable Diffusion and SDXL models only"
        )
    cls = getattr(diffusers, SCHEDULERS[spec.scheduler]) if SCHEDULERS[spec.scheduler] else None
    cls = cls or type(pipe.scheduler)
    changes: dict[str, Any] = {}
    if spec.prediction != "default":
        changes["prediction_type"] = spec.prediction
    if spec.zero_snr:
        # Zero terminal SNR needs the schedule's last step at t = T (Lin et al. 2023).
        changes |= {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}
    if spec.karras:
        changes["use_karras_sigmas"] = True
    accepted = inspect.signature(cls.__init__).parameters
    refused = [key for key in changes if key not in accepted]
    if refused:
        raise ValueError(
            f"model {spec.name}: the {cls.__name__} scheduler has no {', '.join(refused)}; "
            "choose another [models] scheduler (euler, dpmpp_2m, ...)"
        )
    if cls is type(pipe.scheduler) and not changes:
        return pipe.scheduler
    return cls.from_config(pipe.scheduler.config, **changes)
