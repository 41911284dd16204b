"""`builtin:tiny-florence2`: a random-weight Florence-2 captioning model built in code, for
offline runs of `/describe` and `imagine-bot describe`; `builtin:tiny-tagger`: a random-weight
WD-style tagger (a multi-label Swinv2 image classifier) for their tag-style prompts.

Shaped like transformers' own Florence-2 fast test (a one-stage DaViT vision tower, a
one-layer BART 16 wide), with a byte-level BPE tokenizer trained here on the tiny models'
word list and Florence-2's task prompts, and a CLIP image processor at 32x32 pixels. Saved
once to the cache folder and loaded back through the real `from_pretrained`, like a hub
model. Its captions are gibberish made of the word list, by design: it tests the plumbing.

The tagger is shaped like the WD taggers converted to transformers (`p1atdev/wd-swinv2-
tagger-v3-hf`): `Swinv2ForImageClassification` with `problem_type = "multi_label_classification"`
and danbooru tags as its labels, ratings as `rating:<name>` and characters as
`character:<name>`; a tiny Swinv2 at 32x32 pixels, with a ViT image processor.
"""

from __future__ import annotations

import json
from pathlib import Path

from .tiny import default_cache_dir
from .tiny_parts import save_pipeline

__all__ = ["CAPTION_MODELS", "TINY_TAGS", "build_florence2", "build_tagger", "caption_folder"]

_VOCAB = Path(__file__).parent / "vocab"
_VERSION = 1

#: Florence-2's task prompts, as its processor writes them (their words are single tokens).
_TASK_TEXTS = (
    "What does the image describe?",
    "Describe in detail what is shown in the image.",
    "Describe with a paragraph what is shown in the image.",
)


def build_florence2(root: Path, *, seed: int = 0) -> None:
    """The tiny Florence-2 model and its processor, saved to `root`."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import (
        BartTokenizer,
        CLIPImageProcessor,
        Florence2Config,
        Florence2ForConditionalGeneration,
        Florence2Processor,
    )

    clip = json.loads((_VOCAB / "vocab.json").read_text(encoding="utf-8"))
    words = sorted({k[:-4] for k in clip if k.endswith("</w>") and k[:-4].isalpha()})
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=100_000,  # every word ends up one token
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>", "<image>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([*_TASK_TEXTS, *words, *(" " + w for w in words)], trainer)
    trained = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["merges"]]
    tokenizer = BartTokenizer(
        vocab=trained["vocab"], merges=merges, extra_special_tokens={"image_token": "<image>"}
    )
    # 32x32 pixels in 4-pixel strides: 8x8 picture tokens and one pooled, as the model makes.
    images = CLIPImageProcessor(
        size={"height": 32, "width": 32}, do_center_crop=False, image_seq_length=65
    )
    text = {
        "model_type": "bart",
        "vocab_size": len(tokenizer),
        "max_position_embeddings": 256,
        "d_model": 16,
        "encoder_layers": 1,
        "decoder_layers": 1,
        "encoder_ffn_dim": 16,
        "decoder_ffn_dim": 16,
        "encoder_attention_heads": 1,
        "decoder_attention_heads": 1,
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "activation_dropout": 0.0,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "decoder_start_token_id": tokenizer.eos_token_id,
        "forced_bos_token_id": tokenizer.bos_token_id,
    }
    vision = {
        "depths": [1],
        "patch_size": [7],
        "patch_stride": [4],
        "patch_padding": [3],
        "patch_prenorm": [False],
        "embed_dim": [16],
        "num_heads": [1],
        "num_groups": [1],
        "window_size": 4,
        "drop_path_rate": 0.0,
        "projection_dim": 16,
    }
    config = Florence2Config(
        text_config=text, vision_config=vision, image_token_id=tokenizer.image_token_id
    )
    torch.manual_seed(seed)
    model = Florence2ForConditionalGeneration(config).eval()
    processor = Florence2Processor(image_processor=images, tokenizer=tokenizer)
    save_pipeline(_Both(model, processor), root)


class _Both:
    """A model and its processor saved into one folder, as the hub keeps them."""

    def __init__(self, model: object, processor: object) -> None:
        self.model, self.processor = model, processor

    def save_pretrained(self, folder: Path) -> None:
        self.model.save_pretrained(folder)  # type: ignore[attr-defined]
        self.processor.save_pretrained(folder)  # type: ignore[attr-defined]


#: The tiny tagger's labels, as a WD tagger's: four ratings, danbooru tags with underscores, a
#: kaomoji, a tag with parentheses (weighting syntax once in a prompt) and a character.
TINY_TAGS = (
    "rating:general",
    "rating:sensitive",
    "rating:questionable",
    "rating:explicit",
    "1girl",
    "solo",
    "long_hair",
    "blue_sky",
    "smile",
    "outdoors",
    "cherry_blossoms",
    "school_uniform",
    "red_scarf",
    "^_^",
    "hat_(object)",
    "character:hatsune_miku",
)


def build_tagger(root: Path, *, seed: int = 0) -> None:
    """The tiny tagger and its image processor, saved to `root`."""
    import torch
    from transformers import Swinv2Config, Swinv2ForImageClassification, ViTImageProcessor

    config = Swinv2Config(
        image_size=32,
        patch_size=4,
        embed_dim=8,
        depths=[1, 1],
        num_heads=[1, 1],
        window_size=4,
        mlp_ratio=1.0,
        id2label=dict(enumerate(TINY_TAGS)),
        label2id={tag: n for n, tag in enumerate(TINY_TAGS)},
        problem_type="multi_label_classification",
    )
    torch.manual_seed(seed)
    model = Swinv2ForImageClassification(config).eval()
    with torch.no_grad():  # logits spread wide enough that a threshold keeps some, not all
        model.classifier.weight.mul_(40.0)
    images = ViTImageProcessor(size={"height": 32, "width": 32})
    save_pipeline(_Both(model, images), root)


#: Builtin captioning model or tagger -> its builder (called with the folder to write).
CAPTION_MODELS = {"builtin:tiny-florence2": build_florence2, "builtin:tiny-tagger": build_tagger}


def caption_folder(name: str, cache_dir: Path | None = None, *, build: bool = True) -> Path:
    """The saved folder of a builtin captioning model or tagger, built on first use (with
    `build=False`, where it is or would be)."""
    if name not in CAPTION_MODELS:
        raise ValueError(f"unknown builtin model {name!r}; known: {', '.join(CAPTION_MODELS)}")
    root = (cache_dir or default_cache_dir()) / f"{name.replace(':', '-')}-v{_VERSION}"
    if build and not (root / "config.json").exists():
        root.parent.mkdir(parents=True, exist_ok=True)
        CAPTION_MODELS[name](root)
    return root
