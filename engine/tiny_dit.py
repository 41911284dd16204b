"""Tiny random-weight diffusion-transformer pipelines, built in code like `builtin:tiny`.

One per family the engine serves beside SD (`builtin:tiny-flux`, `builtin:tiny-flux-dev`,
`builtin:tiny-flux-kontext`, `builtin:tiny-chroma`, `builtin:tiny-sd3`,
`builtin:tiny-zimage`): shaped like diffusers' own fast-test components, with T5 and Qwen
tokenizers built from a word list (`tiny_parts`), so nothing comes from the hub. Each is
saved once to the cache folder and loaded back through the real `from_pretrained`, like a
real model. Their images are noise, by design: they exist to test the engine's paths against
the stock pipelines, offline and fast.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .tiny_parts import (
    clip_tokenizer,
    qwen_tokenizer,
    save_pipeline,
    t5_tokenizer,
    tiny_qwen3,
    tiny_t5,
    tiny_text_config,
)

__all__ = [
    "DIT_BUILDERS",
    "FLUX_SHAPE",
    "build_chroma",
    "build_flux",
    "build_sd3",
    "build_zimage",
    "flow_scheduler",
    "flux_parts",
    "flux_vae",
]


def flux_vae() -> Any:
    """A four-block VAE (8x smaller latents, as Flux's), four latent channels."""
    return _dit_vae(latent_channels=4, scaling_factor=1.5035, shift_factor=0.0609)


def _dit_vae(*, latent_channels: int, scaling_factor: float, shift_factor: float) -> Any:
    """A four-block VAE (8x smaller latents), as the diffusion transformers' (SD3's and
    Flux's have 16 latent channels, Z-Image reuses Flux's); the factors are the real
    model's."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=8,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=shift_factor,
        scaling_factor=scaling_factor,
    )


def flow_scheduler(*, dynamic: bool) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler

    if dynamic:  # FLUX.1-dev's: the shift follows the image's token count
        return FlowMatchEulerDiscreteScheduler(
            shift=3.0,
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=1.15,
            base_image_seq_len=16,
            max_image_seq_len=256,
        )
    return FlowMatchEulerDiscreteScheduler(shift=1.0)  # FLUX.1-schnell's


#: The tiny FLUX.1-shaped transformers' common shape (FLUX.1, its Fill and Kontext, Chroma):
#: one double- and one single-stream block, 2 heads of 16, 16 latent channels, 32-wide text.
FLUX_SHAPE: Mapping[str, Any] = MappingProxyType(
    {
        "patch_size": 1,
        "in_channels": 16,
        "num_layers": 1,
        "num_single_layers": 1,
        "attention_head_dim": 16,
        "num_attention_heads": 2,
        "joint_attention_dim": 32,
        "axes_dims_rope": (4, 4, 8),
    }
)


def build_flux(root: Path, *, dev: bool, seed: int = 0, kontext: bool = False) -> None:
    """FLUX.1 shaped: CLIP for the pooled prompt, T5 for the sequence, packed 2x2 latents;
    `dev` has the distilled guidance embedding (and dynamic shifting), else schnell's;
    `kontext` makes it a FLUX.1 Kontext pipeline (dev that edits by instruction)."""
    import torch
    from diffusers import FluxKontextPipeline, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        **FLUX_SHAPE, pooled_projection_dim=32, guidance_embeds=dev
    )
    pipe_class = FluxKontextPipeline if kontext else FluxPipeline
    save_pipeline(pipe_class(**flux_parts(transformer, dynamic=dev)), root)


def flux_parts(transformer: Any, *, dynamic: bool) -> dict[str, Any]:
    """A FLUX.1 pipeline's modules around `transformer`: CLIP and T5 (the tiny ones), the
    tiny Flux VAE, the flow scheduler (`dynamic`: dev's shifting). Made after the transformer,
    in this order: the seed gives every model the same weights as before."""
    from transformers import CLIPTextModel

    tokenizer, tokenizer_2 = clip_tokenizer(), t5_tokenizer()
    return {
        "scheduler": flow_scheduler(dynamic=dynamic),
        "vae": flux_vae(),
        "text_encoder": CLIPTextModel(tiny_text_config(tokenizer)).eval(),
        "tokenizer": tokenizer,
        "text_encoder_2": tiny_t5(tokenizer_2),
        "tokenizer_2": tokenizer_2,
        "transformer": transformer,
    }


def build_chroma(root: Path, *, seed: int = 0) -> None:
    """Chroma shaped: T5 only (with its attention mask), true classifier-free guidance."""
    import torch
    from diffusers import ChromaPipeline, ChromaTransformer2DModel

    torch.manual_seed(seed)
    tokenizer = t5_tokenizer()
    transformer = ChromaTransformer2DModel(
        **FLUX_SHAPE,
        approximator_hidden_dim=32,
        approximator_layers=1,
        approximator_num_channels=16,
    )
    pipe = ChromaPipeline(
        scheduler=flow_scheduler(dynamic=True),
        vae=flux_vae(),
        text_encoder=tiny_t5(tokenizer),
        tokenizer=tokenizer,
        transformer=transformer,
    )
    save_pipeline(pipe, root)


def build_sd3(root: Path, *, seed: int = 3) -> None:
    """SD3.5 medium shaped (MMDiT-X: a dual-attention layer, QK norm): two CLIP encoders with
    projection (pooled and sequence) and a T5, true classifier-free guidance, 2x2 patches,
    the flow-matching scheduler with SD3.5's static shift of 3."""
    import torch
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tokenizer, tokenizer_2, tokenizer_3 = clip_tokenizer(), clip_tokenizer(), t5_tokenizer()
    clip = tiny_text_config(tokenizer, hidden_act="gelu", projection_dim=32, num_hidden_layers=2)
    transformer = SD3Transformer2DModel(
        sample_size=8,  # 64 pixels
        patch_size=2,
        in_channels=16,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=64,  # T5's width; both CLIPs' (32 + 32) are padded to it
        caption_projection_dim=32,
        pooled_projection_dim=64,  # both CLIPs' projections
        out_channels=16,
        pos_embed_max_size=32,  # up to 512 pixels
        dual_attention_layers=(0,),
        qk_norm="rms_norm",
    )
    pipe = StableDiffusion3Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_dit_vae(latent_channels=16, scaling_factor=1.5305, shift_factor=0.0609),
        text_encoder=CLIPTextModelWithProjection(clip).eval(),
        tokenizer=tokenizer,
        text_encoder_2=CLIPTextModelWithProjection(clip).eval(),
        tokenizer_2=tokenizer_2,
        text_encoder_3=tiny_t5(tokenizer_3, width=64),
        tokenizer_3=tokenizer_3,
        transformer=transformer,
    )
    save_pipeline(pipe, root)


def build_zimage(root: Path, *, seed: int = 4) -> None:
    """Z-Image shaped: a Qwen3 text model (its second-to-last hidden states, one length per
    prompt), the single-stream transformer taking per-sample lists of latents and caption
    features, Flux's 16-channel VAE, Z-Image-Turbo's scheduler (static shift 3)."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel

    torch.manual_seed(seed)
    tokenizer = qwen_tokenizer()
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=16,
        dim=32,
        n_layers=2,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        cap_feat_dim=16,  # the text model's width
        axes_dims=[8, 4, 4],
        axes_lens=[1024, 64, 64],  # caption positions first: room for the longest prompt
    )
    with torch.no_grad():  # made with `torch.empty`: give them values
        transformer.x_pad_token.normal_()
        transformer.cap_pad_token.normal_()
    pipe = ZImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_dit_vae(latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159),
        text_encoder=tiny_qwen3(tokenizer),
        tokenizer=tokenizer,
        transformer=transformer,
    )
    save_pipeline(pipe, root)


#: Builtin name -> its builder (called with the folder to write).
DIT_BUILDERS: dict[str, Any] = {
    "builtin:tiny-flux": lambda root: build_flux(root, dev=False),
    "builtin:tiny-flux-dev": lambda root: build_flux(root, dev=True, seed=1),
    "builtin:tiny-flux-kontext": lambda root: build_flux(root, dev=True, seed=5, kontext=True),
    "builtin:tiny-chroma": lambda root: build_chroma(root, seed=2),
    "builtin:tiny-sd3": build_sd3,
    "builtin:tiny-zimage": build_zimage,
}
