"""The tiny models' parts: tokenizers built offline and tiny text encoders, UNets and VAEs
shaped like diffusers' fast-test components. `tiny.py` (SD) and `tiny_dit.py` (the diffusion
transformers) assemble them into pipelines.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTokenizer

__all__ = [
    "QWEN_DROPPED",
    "QWEN_EDIT_DROPPED",
    "QWEN_EDIT_SYSTEM",
    "QWEN_SPECIAL",
    "QWEN_TEMPLATE",
    "clip_tokenizer",
    "qwen_tokenizer",
    "qwen_vl_processor",
    "save_pipeline",
    "t5_tokenizer",
    "tiny_qwen3",
    "tiny_scheduler",
    "tiny_t5",
    "tiny_text_config",
    "tiny_unet",
    "tiny_vae",
    "tiny_vision_config",
]

_VOCAB = Path(__file__).parent / "vocab"


def clip_tokenizer() -> CLIPTokenizer:
    """The tiny models' CLIP tokenizer, from the small vocabulary shipped in `engine/vocab`."""
    from transformers import CLIPTokenizer

    vocab = json.loads((_VOCAB / "vocab.json").read_text(encoding="utf-8"))
    lines = (_VOCAB / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
    merges = [tuple(line.split(" ")) for line in lines if line]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def tiny_unet(**changes: Any) -> UNet2DConditionModel:
    """The tiny UNet (diffusers' fast-test shape); `changes` adapt it, e.g. to SDXL."""
    from diffusers import UNet2DConditionModel

    config: dict[str, Any] = {
        "block_out_channels": (32, 64),
        "layers_per_block": 2,
        "sample_size": 32,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "cross_attention_dim": 32,
    }
    return UNet2DConditionModel(**{**config, **changes})


def tiny_vae() -> AutoencoderKL:
    """The tiny VAE: 4 latent channels, 8x smaller latents than pixels."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
    )


def tiny_scheduler() -> DDIMScheduler:
    """The tiny SD models' scheduler: DDIM with SD 1.x's betas."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def tiny_text_config(tokenizer: CLIPTokenizer, **changes: Any) -> CLIPTextConfig:
    """A 32-wide CLIP text encoder config for `tokenizer`; `changes` adapt it."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        **{
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "hidden_size": 32,
            "intermediate_size": 37,
            "layer_norm_eps": 1e-05,
            "num_attention_heads": 4,
            "num_hidden_layers": 5,
            "vocab_size": len(tokenizer),
            **changes,
        }
    )


def tiny_vision_config(*, patch_size: int) -> dict[str, Any]:
    """A 32-wide two-layer CLIP vision tower over 32-pixel pictures in `patch_size` patches
    (a `vision_config` for the tiny safety checker and CLIPSeg)."""
    return {
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "image_size": 32,
        "patch_size": patch_size,
    }


def t5_tokenizer() -> Any:
    """A T5 tokenizer (sentencepiece-style Unigram) over the tiny models' word list: the
    whole words of `engine/vocab`'s CLIP vocabulary, single characters for the rest."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import T5TokenizerFast

    clip = json.loads((_VOCAB / "vocab.json").read_text(encoding="utf-8"))
    words = sorted({k[:-4] for k in clip if k.endswith("</w>") and k[:-4].isalpha()})
    chars = sorted({c for k in clip for c in k.removesuffix("</w>") if c.isprintable()})
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -5.0)]
    pieces += [(f"▁{w}", -1.0 - len(w) / 100) for w in words]
    pieces += [(c, -10.0) for c in chars if c != "▁"]
    model = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    model.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    model.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    model.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    return T5TokenizerFast(
        tokenizer_object=model,
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_ids=0,
        model_max_length=512,
    )


def tiny_t5(tokenizer: Any, width: int = 32) -> Any:
    """A two-layer T5 encoder `width` wide for `tokenizer` (in eval mode: no dropout)."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=width,
        d_ff=37,
        d_kv=8,
        num_heads=4,
        num_layers=2,
        relative_attention_num_buckets=8,
        dropout_rate=0.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return T5EncoderModel(config).eval()


def tiny_qwen3(tokenizer: Any, width: int = 16) -> Any:
    """A two-layer Qwen3 text model `width` wide for `tokenizer` (Z-Image's encoder shape)."""
    from transformers import Qwen3Config, Qwen3Model

    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=width,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
    )
    return Qwen3Model(config).eval()


#: Qwen-Image's prompt template, as `QwenImagePipeline` writes it; its first 34 tokens (up to
#: the prompt) are dropped from the embeddings.
QWEN_TEMPLATE = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, "
    "quantity, text, spatial relationships of the objects and background:<|im_end|>\n"
    "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
)
QWEN_DROPPED = 34

#: Qwen3's chat template, reduced to what `Flux2KleinPipeline` asks of it: user turns and the
#: generation prompt, with the empty thinking block Qwen3 writes when thinking is off.
_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}"
)

QWEN_SPECIAL = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


#: Qwen-Image-Edit's prompt template (`QwenImageEditPlusPipeline`) up to the user's turn:
#: its 64 tokens are dropped from the embeddings.
QWEN_EDIT_DROPPED = 64
QWEN_EDIT_SYSTEM = (
    "<|im_start|>system\nDescribe the key features of the input image (color, shape, size, "
    "texture, objects, background), then explain how the user's text instruction should "
    "alter or modify the image. Generate a new image that meets the user's requirements "
    "while maintaining consistency with the original input where appropriate.<|im_end|>\n"
    "<|im_start|>user\n"
)


def qwen_tokenizer(*, edit: bool = False) -> Any:
    """A Qwen2 tokenizer (byte-level BPE, Qwen's pre-tokenizer and special tokens) trained
    on the tiny models' word list and Qwen-Image's system prompt (`edit`: Qwen-Image-Edit's
    too): every word of them is one token, anything else falls back to bytes."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import AddedToken, Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    clip = json.loads((_VOCAB / "vocab.json").read_text(encoding="utf-8"))
    words = sorted({k[:-4] for k in clip if k.endswith("</w>") and k[:-4].isalpha()})
    model = Tokenizer(models.BPE())
    model.normalizer = normalizers.NFC()
    model.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=100_000,  # more than the corpus needs: every word ends up one token
        special_tokens=list(QWEN_SPECIAL),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [QWEN_TEMPLATE.format(" ".join(words)), "system user assistant"]
    corpus += [QWEN_EDIT_SYSTEM, "Picture 1: 2: 3:"] if edit else []
    corpus += words + [w.capitalize() for w in words]
    model.train_from_iterator(corpus, trainer)
    trained = json.loads(model.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["merges"]]
    tokenizer = Qwen2Tokenizer(
        vocab=trained["vocab"],
        merges=merges,
        additional_special_tokens=list(QWEN_SPECIAL[1:]),
        model_max_length=32768,
    )
    tokenizer.add_tokens([AddedToken(t, special=False) for t in ("<think>", "</think>")])
    tokenizer.chat_template = _CHAT_TEMPLATE
    prefix = tokenizer(QWEN_TEMPLATE.split("{}")[0])["input_ids"]
    assert len(prefix) == QWEN_DROPPED, f"the system prompt takes {len(prefix)} tokens"
    if edit:  # as the real tokenizer: the edit pipeline drops exactly these
        dropped = len(tokenizer(QWEN_EDIT_SYSTEM)["input_ids"])
        assert dropped == QWEN_EDIT_DROPPED, f"the edit system prompt takes {dropped} tokens"
    return tokenizer


def qwen_vl_processor(tokenizer: Any) -> Any:
    """A Qwen2-VL processor for `tokenizer`: pictures in 14-pixel patches merged 2x2, as
    Qwen2.5-VL reads them, but at most 56x56 pixels (4 picture tokens), so the tiny edit
    model reads its pictures cheaply."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor

    image_processor = Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=56 * 56)
    return Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer)


def save_pipeline(pipe: Any, root: Path) -> None:
    """Save `pipe` to `root` through a temporary folder renamed into place (a crash never
    leaves half a model; another process that built it first wins)."""
    import os

    tmp = root.with_name(root.name + f".tmp{os.getpid()}")
    pipe.save_pretrained(tmp)
    tmp.rename(root) if not root.exists() else None
