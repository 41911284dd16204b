"""Tiny random-weight Qwen-Image, Qwen-Image-Edit and FLUX.2 [klein] pipelines, built in
code like `builtin:tiny`: `builtin:tiny-qwenimage`, `builtin:tiny-qwenimage-edit` and
`builtin:tiny-flux2-klein`.

Both read their prompts through a Qwen language model (Qwen2.5-VL for Qwen-Image, Qwen3 for
klein), shaped like diffusers' own fast tests but with a byte-level BPE tokenizer trained here
(the `tokenizers` library) on the tiny models' word list, so nothing comes from the hub. The
word list holds the words of Qwen-Image's system prompt, so its template takes exactly the 34
tokens the pipeline drops, as with the real tokenizer. Each model is saved once to the cache
folder and loaded back through the real `from_pretrained`; 64x64 images through an 8x VAE,
about 1 MB each. Their images are noise, by design.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .tiny_parts import QWEN_SPECIAL, qwen_tokenizer, qwen_vl_processor, save_pipeline

__all__ = ["DIT2_BUILDERS", "build_flux2_klein", "build_qwenimage", "qwenimage_pipeline"]


def build_qwenimage(root: Path, *, seed: int = 0, edit: bool = False) -> None:
    """`qwenimage_pipeline`, saved to `root`."""
    save_pipeline(qwenimage_pipeline(seed=seed, edit=edit), root)


def qwenimage_pipeline(*, seed: int = 0, edit: bool = False, processor: Any = None) -> Any:
    """Qwen-Image shaped: a Qwen2.5-VL text encoder (its last hidden states, the template's
    tokens dropped), a 2x2-patch MMDiT taking text masks and image shapes, the Wan-style 3D
    VAE with per-channel latent statistics, and Qwen-Image's scheduler (exponential dynamic
    shift, terminal 0.02) with sequence lengths scaled down to the tiny image. `edit`: a
    Qwen-Image-Edit 2509 pipeline (`QwenImageEditPlusPipeline`), whose text encoder also
    sees the pictures through a Qwen2-VL processor (`processor`, else
    `tiny_parts.qwen_vl_processor`)."""
    import torch
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImageEditPlusPipeline,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    tokenizer = qwen_tokenizer(edit=edit)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIAL}
    config = Qwen2_5_VLConfig(
        text_config={
            "hidden_size": 16,
            "intermediate_size": 16,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
            "rope_theta": 1000000.0,
            "vocab_size": len(tokenizer),
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 1,
            "hidden_size": 16,
            "intermediate_size": 16,
            "num_heads": 2,
            "out_hidden_size": 16,
        },
        hidden_size=16,
        vocab_size=len(tokenizer),
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
    )
    text_encoder = Qwen2_5_VLForConditionalGeneration(config).eval()
    transformer = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=16,
        out_channels=4,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=16,
        axes_dims_rope=(8, 4, 4),
    )
    # 8x smaller latents, as Qwen-Image's; the edit model's 16x: its pipeline reads every
    # picture at 1024² pixels whatever the model's size, 1024 tokens a picture this way.
    stages = 4 if edit else 3
    vae = AutoencoderKLQwenImage(
        base_dim=2 if edit else 4,  # half the edit model's encoding time at 1024²
        z_dim=4,
        dim_mult=[1, 2, 4, 4, 4][: stages + 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True, True][:stages],
        latents_mean=[0.1, -0.2, 0.05, 0.0],
        latents_std=[1.5, 0.8, 1.2, 1.0],
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=1.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=0.9,
        base_image_seq_len=16,
        max_image_seq_len=512,
        shift_terminal=0.02,
        time_shift_type="exponential",
    )
    parts = {"vae": vae, "text_encoder": text_encoder, "transformer": transformer}
    if edit:
        processor = processor or qwen_vl_processor(tokenizer)
        return QwenImageEditPlusPipeline(
            scheduler=scheduler, tokenizer=tokenizer, processor=processor, **parts
        )
    return QwenImagePipeline(scheduler=scheduler, tokenizer=tokenizer, **parts)


def build_flux2_klein(root: Path, *, seed: int = 0) -> None:
    """FLUX.2 [klein] base shaped (not step-distilled: true CFG against an empty prompt): a
    Qwen3 text encoder whose layers 9, 18 and 27 (the pipeline's defaults) make the prompt's
    embeddings, a FLUX.2 transformer over 2x2-patchified latents, and FLUX.2's VAE with the
    batch-norm statistics its latents are normalised by."""
    import torch
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    tokenizer = qwen_tokenizer()
    config = Qwen3Config(
        hidden_size=16,
        intermediate_size=16,
        num_hidden_layers=27,  # the pipeline reads hidden states 9, 18 and 27
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=8,
        vocab_size=len(tokenizer),
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
    )
    text_encoder = Qwen3ForCausalLM(config).eval()
    transformer = Flux2Transformer2DModel(
        patch_size=1,
        in_channels=16,  # 4 latent channels, patchified 2x2
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=48,  # three hidden-state layers of 16
        timestep_guidance_channels=32,
        axes_dims_rope=(4, 4, 4, 4),
        guidance_embeds=False,
    )
    vae = AutoencoderKLFlux2(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),  # 8x smaller latents
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    with torch.no_grad():  # latent statistics other than the identity, as a trained VAE has
        vae.bn.running_mean.copy_(torch.linspace(-0.3, 0.3, vae.bn.num_features))
        vae.bn.running_var.copy_(torch.linspace(0.5, 2.0, vae.bn.num_features))
    pipe = Flux2KleinPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        is_distilled=False,
    )
    save_pipeline(pipe, root)


#: Builtin name -> its builder (called with the folder to write).
DIT2_BUILDERS: dict[str, Any] = {
    "builtin:tiny-qwenimage": lambda root: build_qwenimage(root, seed=3),
    "builtin:tiny-qwenimage-edit": lambda root: build_qwenimage(root, seed=6, edit=True),
    "builtin:tiny-flux2-klein": lambda root: build_flux2_klein(root, seed=4),
}
