"""A1111 prompt weights for the diffusion transformers whose prompts go through T5: FLUX.1
(schnell, dev, and its Kontext and Fill pipelines), Chroma and SD3/SD3.5.

The approach is sd_embed's (github.com/xhinker/sd_embed, `get_weighted_text_embeddings_flux1`
and `get_weighted_text_embeddings_sd3`, the one the Flux/SD3 weighting tools share): the
prompt is parsed once (`weighting.checked_attention`, A1111's syntax), each piece is
tokenized and its tokens get its weight, the token ids are encoded once, and each token's
row of the encoder's output is multiplied by its weight. The mean is NOT restored (A1111's
CLIP emphasis restores it, `weighting.encode`; sd_embed does not for T5, whose rows the
transformer reads through its own projection, and neither do we). SD3's two CLIP sequences
are weighted the same way (sd_embed's "method 3"). A pooled output is one vector for the
whole prompt: weights do not reach it (as in sd_embed and ComfyUI), it is the stock pooled
output of the prompt's tokens.

Where this differs from sd_embed, it keeps the stock pipeline's shapes, so a weighted request
batches with any other of its size and a prompt without weights is exactly the stock one:
- the ids are the stock tokenizer call's: pieces tokenized without special tokens (stripped
  of the spaces around them, which T5's sentencepiece would read as a token of their own),
  one EOS at the end (sd_embed's T5 ids end every piece with an EOS), padded to the stock
  `max_sequence_length` (512 for FLUX.1 and Chroma, 256 for SD3) and truncated as the stock
  call truncates; CLIP stays one 77-token window (no long-prompt chunks: the sequence length
  is the pipeline's own);
- Chroma's T5 reads the attention mask, and the transformer's mask lets it see the first
  padding token, as `ChromaPipeline` makes them;
- a BREAK is read as a space (there are no windows to start).
ComfyUI weights T5 otherwise: it moves each weighted row away from the empty prompt's row
(`(z - z_empty) * w + z_empty`); not followed here.

Call only on the pipeline's own thread (the tokenizers' shared state), under
`torch.inference_mode()`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .weighting import (
    CHUNK_TOKENS,
    Chunk,
    Embeddings,
    checked_attention,
    chunk_ids,
    converter,
    is_break,
    repeat,
    tokenize,
)

if TYPE_CHECKING:
    import torch

__all__ = ["encode_chroma", "encode_flux", "encode_sd3"]


def _pieces(
    tokenizer: Any, text: str, convert: Any, *, strip: bool
) -> tuple[list[int], list[float]]:
    """The prompt's token ids without special tokens and each token's weight."""
    parsed = [(f, w) for f, w in checked_attention(text) if not is_break(f, w)]
    if strip:
        parsed = [(f.strip(), w) for f, w in parsed]
        parsed = [(f, w) for f, w in parsed if f]
    fragments = [f if convert is None else convert(f, tokenizer) for f, _ in parsed]
    ids: list[int] = []
    weights: list[float] = []
    for tokens, (_, weight) in zip(tokenize(tokenizer, fragments), parsed, strict=True):
        ids += tokens
        weights += [weight] * len(tokens)
    return ids, weights


def _scaled(z: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """Each position's row times its weight (in float32, back in `z`'s dtype); unweighted
    rows stay exactly as they were."""
    import torch

    if all(w == 1.0 for w in weights):
        return z
    factors = torch.tensor(weights, dtype=torch.float32, device=z.device)[None, :, None]
    return (z.float() * factors).to(z.dtype)


def _device_of(module: Any) -> torch.device:
    from diffusers.utils.torch_utils import get_module_execution_device

    return get_module_execution_device(module)


def _t5(
    pipe: Any, encoder: Any, tokenizer: Any, text: str, length: int, *, masked: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """T5's weighted sequence (1, length, width) and the tokenizer's attention mask
    (1, length): the stock call's ids (pieces, EOS, padding, truncated to `length`)."""
    import torch

    ids, weights = _pieces(tokenizer, text, converter(pipe), strip=True)
    ids, weights = [*ids[: length - 1], tokenizer.eos_token_id], [*weights[: length - 1], 1.0]
    used = len(ids)
    ids += [tokenizer.pad_token_id] * (length - used)
    weights += [1.0] * (length - used)
    device = _device_of(encoder)
    mask = torch.tensor([[1] * used + [0] * (length - used)], device=device)
    ids_t = torch.tensor([ids], device=device)
    z = encoder(ids_t, attention_mask=mask)[0] if masked else encoder(ids_t)[0]
    return _scaled(z, weights), mask


def _clip(
    encoder: Any, tokenizer: Any, text: str, convert: Any, *, hidden: int | None
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """One CLIP window, as the stock call truncates it: the weighted hidden states `hidden`
    layers from the end (None: no sequence, FLUX.1 reads the pooled output only) and the
    pooled output."""
    import torch

    ids, weights = _pieces(tokenizer, text, convert, strip=False)
    chunk = Chunk(tuple(ids[:CHUNK_TOKENS]), tuple(weights[:CHUNK_TOKENS]))
    window, _, factors = chunk_ids(tokenizer, chunk)
    ids_t = torch.tensor([window], device=_device_of(encoder))
    if hidden is None:
        return None, encoder(ids_t, output_hidden_states=False).pooler_output
    out = encoder(ids_t, output_hidden_states=True)
    return _scaled(out.hidden_states[-hidden], factors), out[0]


def encode_flux(
    pipe: Any, prompt: str, *, device: torch.device | str, count: int, length: int
) -> Embeddings:
    """FLUX.1's `prompt_embeds` (T5, weighted, `length` long: the stock call's
    `max_sequence_length`) and `pooled_prompt_embeds` (CLIP), as its `encode_prompt` makes
    them for a plain prompt; FLUX.1 reads no negative prompt."""
    _, pooled = _clip(pipe.text_encoder, pipe.tokenizer, prompt, converter(pipe), hidden=None)
    t5, _ = _t5(pipe, pipe.text_encoder_2, pipe.tokenizer_2, prompt, length, masked=False)
    assert pooled is not None
    return Embeddings(
        cond=repeat(t5.to(dtype=pipe.text_encoder_2.dtype, device=device), count),
        uncond=None,
        pooled=repeat(pooled.to(dtype=pipe.text_encoder.dtype, device=device), count),
    )


def encode_chroma(
    pipe: Any,
    prompt: str,
    negative: str,
    *,
    device: torch.device | str,
    count: int,
    cfg: bool,
    length: int,
) -> Embeddings:
    """Chroma's T5 `prompt_embeds` and attention masks (negative ones with guidance), as its
    `encode_prompt` makes them for plain prompts (`length`: as `encode_flux`)."""
    import torch

    dtype = pipe.text_encoder.dtype

    def one(text: str) -> tuple[torch.Tensor, torch.Tensor]:
        z, mask = _t5(pipe, pipe.text_encoder, pipe.tokenizer, text, length, masked=True)
        # The transformer sees the prompt, its EOS and the first padding token (the stock one).
        seen = torch.arange(length, device=device)[None, :] <= mask.sum(dim=1).to(device)
        return repeat(z.to(dtype=dtype, device=device), count), repeat(seen.to(dtype), count)

    cond, mask = one(prompt)
    uncond = negative_mask = None
    if cfg:
        uncond, negative_mask = one(negative)
    return Embeddings(cond=cond, uncond=uncond, mask=mask, negative_mask=negative_mask)


def encode_sd3(
    pipe: Any,
    prompt: str,
    negative: str,
    *,
    device: torch.device | str,
    count: int,
    cfg: bool,
    length: int,
    clip_skip: int = 0,
) -> Embeddings:
    """SD3's `prompt_embeds` (both CLIPs' weighted sequences side by side, padded to T5's
    width, then T5's weighted sequence) and pooled outputs, negative ones with guidance, as
    its `encode_prompt` makes them for plain prompts (whose negative takes no clip_skip)."""
    import torch

    convert = converter(pipe)

    def one(text: str, skip: int) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, pooled = [], []
        clips = ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2))
        for tokenizer, encoder in clips:
            z, p = _clip(encoder, tokenizer, text, convert, hidden=skip + 2)
            assert z is not None
            hidden.append(z.to(dtype=pipe.text_encoder.dtype, device=device))
            pooled.append(p)
        clip = torch.cat(hidden, dim=-1)
        if pipe.text_encoder_3 is None:  # loaded without T5: the stock zeros
            width = pipe.transformer.config.joint_attention_dim
            t5 = torch.zeros((1, length, width), device=device, dtype=pipe.text_encoder.dtype)
        else:
            t5, _ = _t5(pipe, pipe.text_encoder_3, pipe.tokenizer_3, text, length, masked=False)
            t5 = t5.to(dtype=pipe.text_encoder_3.dtype, device=device)
        clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        both = torch.cat([clip, t5], dim=-2)
        return repeat(both, count), repeat(torch.cat(pooled, dim=-1), count)

    cond, pooled = one(prompt, clip_skip)
    uncond = negative_pooled = None
    if cfg:
        uncond, negative_pooled = one(negative, 0)
    return Embeddings(cond=cond, uncond=uncond, pooled=pooled, negative_pooled=negative_pooled)
