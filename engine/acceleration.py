"""Speed-ups applied once after the model loads, and the one line that says which are on.

`[engine] compile` wraps the UNet's forward in `BucketedForward`: every call (a whole
pipeline call's step in batch mode, a tick in step mode) is padded along the batch to the
next of a few fixed sizes, and only those shapes reach `torch.compile`, so a running bot
never recompiles after the warm-up, which compiles each bucket at start-up at the model's
native size. Padding rows copy the last real row and are cut off again: the UNet treats
each sample on its own (GroupNorm, attention within a sample), so real rows are unchanged.

On CUDA, TF32 matmuls are allowed (no effect on fp16/bf16 models' own math), and
`channels_last` is an option. Attention is diffusers' default, PyTorch's SDPA, whose kernel
(flash, cuDNN, memory-efficient or math) torch picks per device, dtype and head size: the
start-up line names the one it picks for the denoiser's attention (`sdpa_backend`), and the
model's step cache when it has one (`caching`).

Runs on the engine's worker thread only.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .config import EngineConfig
from .loader import LoadedModel

__all__ = [
    "BucketedForward",
    "accelerate",
    "bucket_for",
    "default_buckets",
    "sdpa_backend",
    "warm_up",
]

log = logging.getLogger(__name__)


def default_buckets(max_batch_size: int) -> tuple[int, ...]:
    """Powers of two up to the most UNet rows a call can have (images x2 with guidance)."""
    top = 2 * max_batch_size
    out, size = [], 1
    while size < top:
        out.append(size)
        size *= 2
    return (*out, top)


def bucket_for(rows: int, buckets: Sequence[int]) -> int | None:
    """The smallest bucket holding `rows`, or None when none does (run unpadded)."""
    return next((b for b in sorted(buckets) if b >= rows), None)


def _pad(value: Any, rows: int, size: int) -> Any:
    """`value` padded to `size` rows by repeating its last row, if its batch is `rows`."""
    if not isinstance(value, torch.Tensor) or value.ndim == 0 or value.shape[0] != rows:
        return value
    extra = value[-1:].expand(size - rows, *value.shape[1:])
    return torch.cat([value, extra])


#: The UNet's keyword arguments, always all passed (None when unused): dynamo guards on which
#: keywords a call has, and the pipelines and the step loop pass different sets.
_KEYWORDS = (
    "encoder_hidden_states",
    "class_labels",
    "timestep_cond",
    "attention_mask",
    "cross_attention_kwargs",
    "added_cond_kwargs",
    "down_block_additional_residuals",
    "mid_block_additional_residual",
    "down_intrablock_additional_residuals",
    "encoder_attention_mask",
)


class BucketedForward:
    """A UNet forward whose batch is padded to a bucket before it reaches `inner`, always
    called the same way (every keyword, `return_dict=False`), so one graph serves each
    bucket whoever calls."""

    def __init__(self, inner: Callable[..., Any], buckets: Sequence[int]) -> None:
        self.inner = inner
        self.buckets = tuple(sorted(set(buckets)))
        self.calls: dict[int, int] = {}  # rows as run (a bucket when padded) -> calls

    def __call__(
        self,
        sample: torch.Tensor,
        timestep: Any,
        encoder_hidden_states: torch.Tensor | None = None,
        *,
        return_dict: bool = True,
        **kwargs: Any,
    ) -> Any:
        rows = sample.shape[0]
        # One timestep per row, as float32, whichever the caller passed (a pipeline passes
        # one scalar, a step-level tick one per row): one graph per bucket, not several.
        # The UNet embeds timesteps as float32 anyway, so the values it sees are the same.
        if isinstance(timestep, torch.Tensor):
            timestep = timestep.reshape(-1).to(torch.float32).expand(rows).contiguous()
        full = {name: kwargs.pop(name, None) for name in _KEYWORDS}
        full["encoder_hidden_states"] = encoder_hidden_states
        full |= kwargs  # anything newer diffusers passes, as given
        size = bucket_for(rows, self.buckets) or rows
        self.calls[size] = self.calls.get(size, 0) + 1
        if size != rows:
            sample, timestep = _pad(sample, rows, size), _pad(timestep, rows, size)
            full = {k: self._pad_kwarg(v, rows, size) for k, v in full.items()}
        out = self.inner(sample, timestep, **full, return_dict=False)[0][:rows]
        if not return_dict:
            return (out,)
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        return UNet2DConditionOutput(sample=out)

    @staticmethod
    def _pad_kwarg(value: Any, rows: int, size: int) -> Any:
        if isinstance(value, dict):  # added_cond_kwargs (SDXL's text_embeds, time_ids)
            return {k: _pad(v, rows, size) for k, v in value.items()}
        return _pad(value, rows, size)


def accelerate(model: LoadedModel, config: EngineConfig) -> str:
    """Apply the configured speed-ups; returns the start-up line that names them."""
    unet = getattr(model.pipe, "unet", None)
    if model.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if config.channels_last and unet is not None:
        unet.to(memory_format=torch.channels_last)
    compiled = "off"
    if config.compile != "off" and unet is not None:
        buckets = config.compile_buckets or default_buckets(config.max_batch_size)
        mode = None if config.compile == "default" else config.compile
        # One graph per bucket and image size: room for every bucket at many sizes before
        # dynamo would give up compiling and run eager (its default allows 8 graphs).
        limit = max(64, 16 * len(buckets))
        dynamo = torch._dynamo.config  # type: ignore[attr-defined]
        dynamo.recompile_limit = max(getattr(dynamo, "recompile_limit", 8), limit)
        inner = torch.compile(
            unet.forward, mode=mode, backend=config.compile_backend, dynamic=False
        )
        unet.forward = BucketedForward(inner, buckets)
        listed = ", ".join(map(str, buckets))
        compiled = f"{config.compile} ({config.compile_backend}), buckets {listed}"
    denoiser = getattr(model.pipe, "unet", None) or getattr(model.pipe, "transformer", None)
    attention = sdpa_backend(denoiser, model.device, model.dtype)
    dtype = str(model.dtype).removeprefix("torch.")
    layout = "on" if config.channels_last else "off"
    cache = "off"
    if model.cache is not None:
        asked = "every request" if model.profile.cache_all else "fast requests"
        cache = f"{model.cache.describe()} for {asked}"
    return (
        f"engine: {model.profile.name} on {model.device} ({dtype}), attention {attention}, "
        f"channels-last {layout}, compile {compiled}, step cache {cache}"
    )


#: PyTorch's SDPA kernels (`torch.nn.attention.SDPBackend`), as the start-up line names them.
_SDPA_KERNELS = {0: "math", 1: "flash", 2: "efficient", 3: "cudnn", 4: "overrideable"}


def sdpa_backend(module: Any, device: torch.device, dtype: torch.dtype) -> str:
    """`sdpa (<kernel>)`: the kernel PyTorch's scaled-dot-product attention picks for the
    denoiser's first attention layer (its head count and size, the model's dtype and device,
    no mask), as torch itself chooses it; plain `sdpa` when that cannot be asked."""
    layers = () if module is None else module.modules()
    attention = next((m for m in layers if hasattr(m, "heads") and hasattr(m, "to_q")), None)
    try:
        heads = int(attention.heads)  # type: ignore[union-attr]
        size = int(attention.to_q.out_features) // heads  # type: ignore[union-attr]
        query = torch.zeros(2, heads, 64, size, device=device, dtype=dtype)
        choice = torch._fused_sdp_choice(query, query, query)  # type: ignore[attr-defined]
    except Exception:  # no attention found, or a torch without the private chooser
        return "sdpa"
    return f"sdpa ({_SDPA_KERNELS.get(int(choice), 'unknown')} kernel)"


def warm_up(model: LoadedModel) -> None:
    """Compile every bucket now, at the native size, so no user waits for a compile."""
    unet = getattr(model.pipe, "unet", None)
    forward = getattr(unet, "forward", None)
    if unet is None or not isinstance(forward, BucketedForward):
        return
    size = model.profile.native_size // getattr(model.pipe, "vae_scale_factor", 8)
    channels = unet.config.in_channels
    for bucket in forward.buckets:
        started = time.perf_counter()
        # Inference tensors, as in real calls: dynamo guards on that too.
        with torch.inference_mode():
            shape = (bucket, channels, size, size)
            sample = torch.zeros(shape, device=model.device, dtype=model.dtype)
            kwargs = _dummy_conditioning(model, bucket)
            timestep = torch.tensor(1, device=model.device)
            call = functools.partial(unet, sample, timestep, **kwargs, return_dict=False)
            if model.cache is not None:  # the step cache's forwards too
                model.cache.warm(call)
            else:
                call()
        log.info(
            "compiled the UNet for %d row(s) at %dx%d in %.1f s",
            bucket,
            model.profile.native_size,
            model.profile.native_size,
            time.perf_counter() - started,
        )


def _dummy_conditioning(model: LoadedModel, rows: int) -> dict[str, Any]:
    unet = model.pipe.unet
    dim = unet.config.cross_attention_dim
    hidden = torch.zeros(rows, 77, dim, device=model.device, dtype=model.dtype)
    kwargs: dict[str, Any] = {"encoder_hidden_states": hidden}
    if model.profile.family == "sdxl":
        projection = unet.config.projection_class_embeddings_input_dim
        time_ids = torch.zeros(rows, 6, device=model.device, dtype=model.dtype)
        embeds = torch.zeros(
            rows, projection - 6 * unet.config.addition_time_embed_dim, device=model.device,
            dtype=model.dtype,
        )  # fmt: skip
        kwargs["added_cond_kwargs"] = {"text_embeds": embeds, "time_ids": time_ids}
    return kwargs
