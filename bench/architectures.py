"""Full-size SD 1.5 and SDXL architectures with random weights, built in code (no downloads).

Throughput and memory do not depend on the weights, so these stand in for the real models on
machines that cannot reach the Hugging Face hub. Configs follow the published
`runwayml/stable-diffusion-v1-5` and `stabilityai/stable-diffusion-xl-base-1.0` ones.
`scale` < 1 shrinks channel widths for a quick CPU smoke run of the benchmark code itself.
"""

from __future__ import annotations

from typing import Any

import torch

from engine.tiny_parts import clip_tokenizer

__all__ = ["build", "sd15", "sdxl"]


def _w(channels: int, scale: float) -> int:
    return max(32, int(channels * scale) // 32 * 32)


def _vae(scale: float, scaling_factor: float) -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=2,
        sample_size=512,
        block_out_channels=tuple(_w(c, scale) for c in (128, 256, 512, 512)),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        scaling_factor=scaling_factor,
    )


def _clip(
    hidden: int, layers: int, heads: int, inner: int, act: str, projection: int | None, scale: float
) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    hidden_s = _w(hidden, scale)
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden_s,
        intermediate_size=_w(inner, scale),
        num_hidden_layers=max(1, int(layers * scale)),
        num_attention_heads=max(1, heads * hidden_s // hidden),
        max_position_embeddings=77,
        hidden_act=act,
        projection_dim=_w(projection or hidden, scale),
        bos_token_id=998,
        eos_token_id=999,
        pad_token_id=999,
    )
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def sd15(scale: float = 1.0) -> Any:
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=tuple(_w(c, scale) for c in (320, 640, 1280, 1280)),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=_w(768, scale),
        attention_head_dim=8,
    )
    return StableDiffusionPipeline(
        vae=_vae(scale, 0.18215),
        text_encoder=_clip(768, 12, 12, 3072, "quick_gelu", None, scale),
        tokenizer=clip_tokenizer(),
        unet=unet,
        scheduler=PNDMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            skip_prk_steps=True,
            steps_offset=1,
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def sdxl(scale: float = 1.0) -> Any:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    te1 = _clip(768, 12, 12, 3072, "quick_gelu", None, scale)
    te2 = _clip(1280, 32, 20, 5120, "gelu", 1280, scale)
    unet = UNet2DConditionModel(
        sample_size=128,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=tuple(_w(c, scale) for c in (320, 640, 1280)),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, max(1, int(10 * scale))),
        attention_head_dim=(5, 10, 20),
        use_linear_projection=True,
        cross_attention_dim=te1.config.hidden_size + te2.config.hidden_size,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=te2.config.projection_dim + 6 * 256,
    )
    return StableDiffusionXLPipeline(
        vae=_vae(scale, 0.13025),
        text_encoder=te1,
        text_encoder_2=te2,
        tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer(),
        unet=unet,
        scheduler=EulerDiscreteScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            steps_offset=1,
            timestep_spacing="leading",
        ),
    )


def build(name: str, *, device: str, dtype: torch.dtype, scale: float = 1.0) -> Any:
    """`sd15` or `sdxl` on `device` in `dtype`, weights initialised on the device (fast)."""
    with torch.device(device):
        pipe = {"sd15": sd15, "sdxl": sdxl}[name](scale)
    pipe.to(device=device, dtype=dtype)
    if name == "sdxl" and dtype == torch.float16:
        pipe.vae.config.force_upcast = False  # random weights don't overflow; keep fp16 timing
    pipe.set_progress_bar_config(disable=True)
    return pipe
