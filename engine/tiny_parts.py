"""The tiny models' parts: tokenizers built offline and tiny text encoders, UNets and VAEs
shaped like diffusers' fast-test components. `tiny.py` (SD) and `tiny_dit.py` (the diffusion
transformers) assemble them into pipelines.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTokenizer

__all__ = [
    "clip_tokenizer",
    "qwen_tokenizer",
    "t5_tokenizer",
    "tiny_qwen3",
    "tiny_t5",
    "tiny_text_config",
    "tiny_unet",
    "tiny_vae",
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


#: Qwen3's chat template, cut to what a text-to-image pipeline renders: one user turn and the
#: assistant's opening (an empty thinking block when thinking is switched off).
_QWEN_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}"
)


def qwen_tokenizer() -> Any:
    """A Qwen tokenizer (`Qwen2Tokenizer`: byte-level BPE with Qwen's own pre-tokenizer, its
    special tokens and a chat template) over the tiny models' word list: the 256 byte symbols,
    then each whole word of `engine/vocab`'s CLIP vocabulary (bare and after a space) merged
    left to right."""
    from tokenizers import AddedToken, pre_tokenizers
    from transformers import Qwen2Tokenizer

    clip = json.loads((_VOCAB / "vocab.json").read_text(encoding="utf-8"))
    words = sorted({k[:-4].lower() for k in clip if k.endswith("</w>") and k[:-4].isalpha()})
    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    merges: list[tuple[str, str]] = []
    for word in (w for w in words if w.isascii()):
        for piece in (word, "\u0120" + word):  # "Ġ": a leading space in byte-level symbols
            current = piece[0]
            for char in piece[1:]:
                if current + char not in vocab:
                    merges.append((current, char))
                    vocab[current + char] = len(vocab)
                current += char
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
    for token in specials:
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, model_max_length=131072)
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tokenizer.chat_template = _QWEN_CHAT_TEMPLATE
    return tokenizer


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
