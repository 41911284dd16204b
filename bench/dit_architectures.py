"""Full-size FLUX.1 [schnell], SD3.5 Medium and Z-Image-Turbo with random weights, built in
code (no downloads), for the GPU rows of issue 23: speed and peak memory do not depend on the
weights, so these stand in for the real models on a machine that cannot reach the hub.

Shapes follow the published configurations (`black-forest-labs/FLUX.1-schnell`,
`stabilityai/stable-diffusion-3.5-medium`, `Tongyi-MAI/Z-Image-Turbo`: transformer, text
encoders, VAE and scheduler); tokenizers are the tiny ones built from a word list
(`engine.tiny_parts`): a prompt's length is what they change, not the work per step. Modules
are made directly on the device in the run's dtype (no fp32 copy: FLUX.1's transformer alone
is 24 GB in bf16). `scale` < 1 shrinks widths and depths for a CPU smoke run of the code.
"""

from __future__ import annotations

from typing import Any

import torch

from engine.tiny_parts import clip_tokenizer, qwen_tokenizer, t5_tokenizer

__all__ = ["DIT_CALLS", "build_dit"]

#: Each model's size and the pipeline call its card recommends (steps, guidance).
DIT_CALLS: dict[str, dict[str, Any]] = {
    "flux-schnell": {"size": 1024, "num_inference_steps": 4, "guidance_scale": 0.0},
    "sd35-medium": {"size": 1024, "num_inference_steps": 40, "guidance_scale": 4.5},
    "zimage-turbo": {"size": 1024, "num_inference_steps": 9, "guidance_scale": 0.0},
}


def _n(value: int, scale: float, floor: int = 1) -> int:
    return max(floor, int(value * scale))


def _heads(heads: int, scale: float) -> int:
    return max(2, int(heads * scale) // 2 * 2)


def _vae(scale: float, scaling_factor: float, shift_factor: float) -> Any:
    """The 16-channel VAE of FLUX.1, SD3.5 and Z-Image (no quant convs)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=16,
        layers_per_block=2,
        block_out_channels=tuple(max(32, int(c * scale) // 32 * 32) for c in (128, 256, 512, 512)),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def _clip(
    hidden: int, layers: int, heads: int, inner: int, act: str, scale: float, *, projection: bool
) -> Any:
    """A CLIP text model (CLIP-L 768 wide, CLIP-G 1280 wide), with its projection or not."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    width = _heads(heads, scale) * (hidden // heads)
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=width,
        intermediate_size=_n(inner, scale, 32),
        num_hidden_layers=_n(layers, scale),
        num_attention_heads=_heads(heads, scale),
        max_position_embeddings=77,
        hidden_act=act,
        projection_dim=width,
        bos_token_id=998,
        eos_token_id=999,
        pad_token_id=999,
    )
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def _t5(scale: float, least: int = 64) -> Any:
    """T5 v1.1 XXL's encoder (4.7 B parameters at scale 1), at least `least` wide."""
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(
        T5Config(
            vocab_size=32128,
            d_model=_n(4096, scale, least),
            d_ff=_n(10240, scale, 64),
            d_kv=64,
            num_heads=_heads(64, scale),
            num_layers=_n(24, scale),
            feed_forward_proj="gated-gelu",
            dropout_rate=0.0,
        )
    ).eval()


def _flow(**config: Any) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(**config)


def flux_schnell(scale: float) -> Any:
    from diffusers import FluxPipeline, FluxTransformer2DModel

    heads = _heads(24, scale)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=_n(19, scale),
        num_single_layers=_n(38, scale),
        attention_head_dim=128,
        num_attention_heads=heads,
        joint_attention_dim=_n(4096, scale, 64),
        pooled_projection_dim=_heads(12, scale) * 64,
        guidance_embeds=False,
        axes_dims_rope=(16, 56, 56),
    )
    clip_l = _clip(768, 12, 12, 3072, "quick_gelu", scale, projection=False)
    return FluxPipeline(
        scheduler=_flow(shift=1.0, use_dynamic_shifting=False),
        vae=_vae(scale, 0.3611, 0.1159),
        text_encoder=clip_l,
        tokenizer=clip_tokenizer(),
        text_encoder_2=_t5(scale),
        tokenizer_2=t5_tokenizer(),
        transformer=transformer,
    )


def sd35_medium(scale: float) -> Any:
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    layers = _n(24, scale)
    clip_l = _clip(768, 12, 12, 3072, "quick_gelu", scale, projection=True)
    clip_g = _clip(1280, 32, 20, 5120, "gelu", scale, projection=True)
    pooled = clip_l.config.projection_dim + clip_g.config.projection_dim
    t5 = _t5(scale, least=pooled)  # the CLIP features are padded to T5's width
    transformer = SD3Transformer2DModel(
        sample_size=128,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=layers,
        attention_head_dim=64,
        num_attention_heads=_heads(24, scale),
        joint_attention_dim=t5.config.d_model,
        caption_projection_dim=_heads(24, scale) * 64,
        pooled_projection_dim=pooled,
        pos_embed_max_size=384,
        dual_attention_layers=tuple(range(min(13, layers))),
        qk_norm="rms_norm",
    )
    return StableDiffusion3Pipeline(
        scheduler=_flow(shift=3.0),
        vae=_vae(scale, 1.5305, 0.0609),
        text_encoder=clip_l,
        tokenizer=clip_tokenizer(),
        text_encoder_2=clip_g,
        tokenizer_2=clip_tokenizer(),
        text_encoder_3=t5,
        tokenizer_3=t5_tokenizer(),
        transformer=transformer,
    )


def zimage_turbo(scale: float) -> Any:
    from diffusers import ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    tokenizer = qwen_tokenizer()
    text_heads = _heads(32, scale)
    encoder = Qwen3Model(  # Qwen3-4B
        Qwen3Config(
            vocab_size=151936,
            hidden_size=text_heads * 80,
            intermediate_size=_n(9728, scale, 64),
            num_hidden_layers=_n(36, scale, 2),
            num_attention_heads=text_heads,
            num_key_value_heads=max(1, text_heads // 4),
            head_dim=128,
            max_position_embeddings=40960,
            rope_theta=1_000_000.0,
            pad_token_id=tokenizer.pad_token_id,
        )
    ).eval()
    heads = _heads(30, scale)
    transformer = ZImageTransformer2DModel(
        dim=heads * 128,
        n_layers=_n(30, scale),
        n_refiner_layers=2,
        n_heads=heads,
        n_kv_heads=heads,
        cap_feat_dim=encoder.config.hidden_size,
    )
    with torch.no_grad():  # made with `torch.empty`: give them values
        transformer.x_pad_token.normal_()
        transformer.cap_pad_token.normal_()
    return ZImagePipeline(
        scheduler=_flow(shift=3.0),
        vae=_vae(scale, 0.3611, 0.1159),
        text_encoder=encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )


_BUILDERS = {"flux-schnell": flux_schnell, "sd35-medium": sd35_medium, "zimage-turbo": zimage_turbo}


def build_dit(name: str, *, device: str, dtype: torch.dtype, scale: float = 1.0) -> Any:
    """`name` (a key of DIT_CALLS) made on `device` directly in `dtype`."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            pipe = _BUILDERS[name](scale)
    finally:
        torch.set_default_dtype(previous)
    pipe.to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe
