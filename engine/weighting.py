"""AUTOMATIC1111-style prompt weighting and long prompts for the diffusers SD and SDXL pipelines.

Users write prompts in A1111's syntax: `(word)` is weight x1.1, `((word))` x1.21, `(word:1.3)`
sets a factor, `[word]` is x1/1.1, `\\(` `\\)` `\\[` `\\]` `\\\\` are literal characters and
`BREAK` starts a new chunk. Prompts longer than CLIP's 77-token window are cut into chunks of 75
tokens, each wrapped in BOS/EOS, padded to 77 and encoded alone, then concatenated along the
sequence axis (what the UNet's cross-attention accepts at any length).

The parser and chunker reproduce A1111's `modules/prompt_parser.py` (`parse_prompt_attention`)
and `modules/sd_hijack_clip.py` (chunking with comma backtrack, weights applied to the encoder
output and its mean restored), so prompts copied from A1111 mean the same here. Encoding mirrors
diffusers' own `encode_prompt`, so a prompt without syntax encodes exactly as the stock pipeline
would encode it. The diffusion transformers that read T5 (FLUX.1, Chroma, SD3) weight their
one sequence per token in `weighting_t5.py`, on this parser.

The tokenizer calls here change a fast tokenizer's shared padding/truncation state: call the
functions that take a tokenizer or a pipeline only on the thread that owns it (the worker), or
on a copy of the tokenizer.

The parser (`parse_attention`, `plain_text`) needs no torch, and this module imports torch
only where a tensor is made: the front end reads prompts as the model will through
`request.model_text` without loading torch.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where a tensor is made: the parser is torch-free
    import torch
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "CHUNK_TOKENS",
    "COMMA_BACKTRACK",
    "MAX_WEIGHT",
    "Chunk",
    "Embeddings",
    "WeightError",
    "checked_attention",
    "chunk_ids",
    "chunks_needed",
    "converter",
    "encode",
    "has_weights",
    "is_break",
    "is_plain",
    "needs_embeddings",
    "parse_attention",
    "plain_text",
    "repeat",
    "tokenize",
]

CHUNK_TOKENS = 75
"""Prompt tokens per chunk: CLIP's 77 positions less BOS and EOS."""
COMMA_BACKTRACK = 20
"""A full chunk whose last comma is this close to its end is cut after that comma (A1111's
default `comma_padding_backtrack`), so a phrase is not split across two chunks."""
MAX_WEIGHT = 10.0
"""The largest factor a piece of the prompt may end up with, either sign (nesting multiplies:
`((a:3):4)` weighs 13.2). A1111 sets no bound, but `(cat:999…9)` is infinity, and the emphasis
turns it into NaN: a black image. Past 2 or 3 an image already falls apart, so nothing a user
means is refused."""

_ROUND = 1.1
_SQUARE = 1 / 1.1

# A1111's tokens, in its order (the newest version, which allows spaces around the weight).
_ATTENTION = re.compile(
    r"""
\\\(|
\\\)|
\\\[|
\\]|
\\\\|
\\|
\(|
\[|
:\s*([+-]?[.\d]+)\s*\)|
\)|
]|
[^\\()\[\]:]+|
:
""",
    re.X,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse_attention(text: str) -> list[tuple[str, float]]:
    """Split `text` into (fragment, weight) pairs with A1111's exact semantics.

    Unclosed brackets still apply their factor to the rest of the text, unmatched closing ones
    are literal text, neighbours of equal weight merge, an empty result is `[("", 1.0)]`, and
    each `BREAK` becomes `("BREAK", -1)` (inside brackets its weight is scaled like any text,
    and A1111 then treats it as the word "BREAK": so does this). A weight that is not a number,
    such as `(a:1.2.3)`, raises ValueError, as in A1111.
    """
    res: list[list[Any]] = []
    round_brackets: list[int] = []
    square_brackets: list[int] = []

    def multiply_range(start: int, multiplier: float) -> None:
        for p in range(start, len(res)):
            res[p][1] *= multiplier

    for m in _ATTENTION.finditer(text):
        token = m.group(0)
        weight = m.group(1)
        if token.startswith("\\"):
            res.append([token[1:], 1.0])
        elif token == "(":
            round_brackets.append(len(res))
        elif token == "[":
            square_brackets.append(len(res))
        elif weight is not None and round_brackets:
            multiply_range(round_brackets.pop(), float(weight))
        elif token == ")" and round_brackets:
            multiply_range(round_brackets.pop(), _ROUND)
        elif token == "]" and square_brackets:
            multiply_range(square_brackets.pop(), _SQUARE)
        else:
            for i, part in enumerate(_BREAK.split(token)):
                if i > 0:
                    res.append(["BREAK", -1])
                res.append([part, 1.0])

    for pos in round_brackets:
        multiply_range(pos, _ROUND)
    for pos in square_brackets:
        multiply_range(pos, _SQUARE)
    if not res:
        res = [["", 1.0]]

    i = 0  # merge runs of identical weights
    while i + 1 < len(res):
        if res[i][1] == res[i + 1][1]:
            res[i][0] += res[i + 1][0]
            res.pop(i + 1)
        else:
            i += 1
    return [(fragment, weight) for fragment, weight in res]


def is_break(fragment: str, weight: float) -> bool:
    """Whether a parsed piece is a BREAK (`parse_attention`'s `("BREAK", -1)`)."""
    return fragment == "BREAK" and weight == -1


class WeightError(ValueError):
    """A prompt's weights cannot be encoded; the message is a sentence for users."""


def checked_attention(text: str, what: str = "prompt") -> list[tuple[str, float]]:
    """`parse_attention(text)`, or `WeightError` naming `what` ("prompt", "negative prompt")
    for a weight that is not a number (A1111 fails on it too) or whose piece ends up weighing
    more than `MAX_WEIGHT` either way, infinity included."""
    try:
        parsed = parse_attention(text)
    except ValueError:
        raise WeightError(
            f"A weight in the {what} is not a number: write it like (word:1.2)."
        ) from None
    for fragment, weight in parsed:
        if not (is_break(fragment, weight) or -MAX_WEIGHT <= weight <= MAX_WEIGHT):
            piece = " ".join(fragment.split())
            piece = piece if len(piece) <= 40 else piece[:39] + "…"
            raise WeightError(
                f"Prompt weights must be between {-MAX_WEIGHT:g} and {MAX_WEIGHT:g}; "
                f"in the {what}, {piece!r} weighs {weight:.3g}."
            )
    return parsed


def is_plain(text: str) -> bool:
    """Whether the syntax in `text` changes nothing: every weight is 1.0 and there is no BREAK.

    Then the text encodes exactly as `plain_text(text)` does, so the stock pipeline can take it.
    """
    return all(weight == 1.0 for _, weight in parse_attention(text))


def has_weights(text: str) -> bool:
    """Whether some piece of `text` weighs other than 1.0 (a BREAK is no weight: the
    families that read one sequence read it as a space, as `plain_text` does)."""
    return any(w != 1.0 for f, w in parse_attention(text) if not is_break(f, w))


def plain_text(text: str) -> str:
    """`text` without its syntax, escapes resolved (`"(robot:1.0)"` -> `"robot"`); a BREAK
    becomes one space."""
    return "".join(" " if is_break(f, w) else f for f, w in parse_attention(text))


@dataclass(frozen=True)
class Chunk:
    """Up to 75 prompt tokens and their weights, before BOS/EOS and padding."""

    tokens: tuple[int, ...]
    weights: tuple[float, ...]


_EMPTY = Chunk((), ())

_Convert = Callable[[str, "PreTrainedTokenizerBase"], str]


def tokenize(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    """Token ids of each text without BOS/EOS, untruncated (A1111 tokenizes fragments so)."""
    if not texts:
        return []
    out = tokenizer(texts, add_special_tokens=False, truncation=False, padding=False, verbose=False)
    return [list(ids) for ids in out["input_ids"]]


def _comma_id(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The id of CLIP's word-final comma `,</w>`, or None where the vocabulary has none."""
    ident = tokenizer.convert_tokens_to_ids(",</w>")
    if isinstance(ident, int) and tokenizer.convert_ids_to_tokens(ident) == ",</w>":
        return ident
    return None


def _chunks(
    tokenizer: PreTrainedTokenizerBase, text: str, convert: _Convert | None = None
) -> list[Chunk]:
    """A1111's `tokenize_line`: the prompt's chunks, BREAK and comma backtrack included;
    `WeightError` for weights it must not encode."""
    parsed = checked_attention(text)
    fragments = [f for f, w in parsed if not is_break(f, w)]
    if convert is not None:
        fragments = [convert(f, tokenizer) for f in fragments]
    tokenized = iter(tokenize(tokenizer, fragments))
    comma = _comma_id(tokenizer)

    chunks: list[Chunk] = []
    tokens: list[int] = []
    weights: list[float] = []
    last_comma = -1

    def close(keep: int) -> None:
        """End the current chunk after its first `keep` tokens; the rest starts the next."""
        nonlocal tokens, weights, last_comma
        chunks.append(Chunk(tuple(tokens[:keep]), tuple(weights[:keep])))
        tokens, weights = tokens[keep:], weights[keep:]
        last_comma = -1

    for fragment, weight in parsed:
        if is_break(fragment, weight):
            close(len(tokens))
            continue
        for token in next(tokenized):
            if token == comma:
                last_comma = len(tokens)
            elif (
                len(tokens) == CHUNK_TOKENS
                and last_comma != -1
                and len(tokens) - last_comma <= COMMA_BACKTRACK
            ):
                close(last_comma + 1)
            if len(tokens) == CHUNK_TOKENS:
                close(len(tokens))
            tokens.append(token)
            weights.append(weight)
    if tokens or not chunks:
        close(len(tokens))
    return chunks


def chunks_needed(text: str, negative: str, tokenizer: PreTrainedTokenizerBase) -> int:
    """How many 77-token chunks (k >= 1) the prompt and negative prompt take, the larger count:
    both are encoded to that many, the shorter padded with empty chunks as A1111 does.
    `WeightError` for weights `encode` would refuse."""
    return max(len(_chunks(tokenizer, text)), len(_chunks(tokenizer, negative)))


def needs_embeddings(text: str, negative: str, tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether `encode` is needed: a prompt has weights or BREAK, or needs more than one chunk.

    When False, the stock pipeline given `plain_text(text)` and `plain_text(negative)` makes
    the same image `encode` would (so `(robot:1.0)` draws exactly what `robot` draws).
    """
    if not (is_plain(text) and is_plain(negative)):
        return True
    return chunks_needed(text, negative, tokenizer) > 1


@dataclass
class Embeddings:
    """What the pipeline's `encode_prompt` returns, ready for `prompt_embeds=` and friends."""

    cond: torch.Tensor
    """(count, 77 * k, dim); for the T5 families, the stock sequence (`weighting_t5`)."""
    uncond: torch.Tensor | None
    """Like `cond`; None without classifier-free guidance."""
    pooled: torch.Tensor | None = None
    """(count, dim) from `text_encoder_2`'s first chunk (SDXL), or the pooled CLIP output
    (FLUX.1, SD3: `weighting_t5`)."""
    negative_pooled: torch.Tensor | None = None
    """Like `pooled`, for the negative prompt: SDXL with guidance only."""
    mask: torch.Tensor | None = None
    """(count, length): which positions the denoiser attends to (Chroma only)."""
    negative_mask: torch.Tensor | None = None
    """Like `mask`, for the negative prompt: Chroma with guidance only."""


def chunk_ids(
    tokenizer: PreTrainedTokenizerBase, chunk: Chunk
) -> tuple[list[int], list[int], list[float]]:
    """Input ids, attention mask and weights of one chunk: BOS, tokens, EOS, then padding.

    Padding is the tokenizer's pad token after the first EOS (SD 2.x pads with `!`, not EOS),
    exactly as the stock tokenizer pads a short prompt to 77.
    """
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    n = len(chunk.tokens)
    rest = CHUNK_TOKENS - n
    ids = [bos, *chunk.tokens, eos] + [pad] * rest
    mask = [1] * (n + 2) + [0] * rest
    weights = [1.0, *chunk.weights] + [1.0] * (rest + 1)
    return ids, mask, weights


def _emphasize(z: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """A1111's "Original" emphasis: scale each position's vector by its weight, then restore
    the chunk's mean, which keeps the overall magnitude the UNet expects."""
    import torch

    if all(w == 1.0 for w in weights):
        return z  # z * 1 * (mean / mean) is z exactly; skip the work
    z32 = z.float()
    original_mean = z32.mean()
    z32 = z32 * torch.tensor(weights, dtype=torch.float32, device=z.device)[None, :, None]
    z32 = z32 * (original_mean / z32.mean())
    return z32.to(z.dtype)


def _padded(chunks: list[Chunk], k: int) -> list[Chunk]:
    return chunks + [_EMPTY] * (k - len(chunks))


def converter(pipe: Any) -> _Convert | None:
    """Textual inversion's multi-vector expansion, as `encode_prompt` applies it."""
    from diffusers.loaders import TextualInversionLoaderMixin

    if isinstance(pipe, TextualInversionLoaderMixin):
        return lambda text, tokenizer: pipe.maybe_convert_prompt(text, tokenizer)
    return None


def _encode_sd(
    pipe: Any, chunks: list[Chunk], device: torch.device | str, clip_skip: int = 0
) -> torch.Tensor:
    """SD 1.x/2.x: the text encoder's last hidden state per chunk, as `encode_prompt` takes it
    (with its attention mask only where the encoder's config asks for one); with `clip_skip`,
    the hidden state that many layers earlier through the final layer norm, as diffusers
    defines it (its own `encode_prompt` cannot: it looks for `text_model`, which transformers
    5's CLIPTextModel no longer has)."""
    import torch

    encoder = pipe.text_encoder
    use_mask = bool(getattr(encoder.config, "use_attention_mask", False))
    norm = getattr(encoder, "final_layer_norm", None) or encoder.text_model.final_layer_norm
    parts = []
    for chunk in chunks:
        ids, mask, weights = chunk_ids(pipe.tokenizer, chunk)
        attention = torch.tensor([mask], device=device) if use_mask else None
        ids_t = torch.tensor([ids]).to(device)
        if clip_skip:
            out = encoder(ids_t, attention_mask=attention, output_hidden_states=True)
            z = norm(out.hidden_states[-(clip_skip + 1)])
        else:
            z = encoder(ids_t, attention_mask=attention)[0]
        parts.append(_emphasize(z, weights))
    return torch.cat(parts, dim=1)


def _sdxl_pairs(pipe: Any) -> list[tuple[PreTrainedTokenizerBase, Any]]:
    """The (tokenizer, text encoder) pairs `encode_prompt` uses: both, or only the second."""
    pairs = [(pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)]
    return [(t, e) for t, e in pairs if t is not None and e is not None]


def _encode_sdxl(
    pipe: Any, per_encoder: list[list[Chunk]], k: int, clip_skip: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL: each encoder's penultimate hidden states per chunk (`clip_skip` layers earlier
    still, as the pipeline's own `clip_skip`), concatenated along features, and the pooled
    output of the first encoder that has one (text_encoder_2), first chunk."""
    import torch
    from diffusers.utils.torch_utils import get_module_execution_device

    pooled = None
    hidden = []
    for (tokenizer, encoder), chunks in zip(_sdxl_pairs(pipe), per_encoder, strict=True):
        device = get_module_execution_device(encoder)
        parts = []
        for chunk in _padded(chunks, k):
            ids, _, weights = chunk_ids(tokenizer, chunk)
            out = encoder(torch.tensor([ids]).to(device), output_hidden_states=True)
            if pooled is None and out[0].ndim == 2:  # text_encoder_2, first chunk
                pooled = out[0]
            parts.append(_emphasize(out.hidden_states[-(clip_skip + 2)], weights))
        hidden.append(torch.cat(parts, dim=1))
    if pooled is None:
        raise ValueError("no SDXL text encoder returned a pooled output")
    return torch.cat(hidden, dim=-1), pooled


def repeat(x: torch.Tensor, count: int) -> torch.Tensor:
    """`count` copies along the batch axis, as `encode_prompt`'s repeat-and-view makes them."""
    return x.repeat(count, *([1] * (x.ndim - 1)))


def _is_empty(text: str) -> bool:
    """Whether nothing is left of `text` once its syntax is removed (`""`, `"()"`, ...)."""
    return parse_attention(text) == [("", 1.0)]


def encode(
    pipe: Any,
    family: str,
    prompt: str,
    negative: str,
    *,
    device: torch.device | str,
    count: int,
    cfg: bool,
    min_chunks: int = 1,
    clip_skip: int = 0,
) -> Embeddings:
    """Encode a weighted, possibly long prompt as `pipe.encode_prompt` encodes a plain one.

    `family` is "sd" (StableDiffusionPipeline, 1.x/2.x) or "sdxl" (StableDiffusionXLPipeline).
    `cond` and `uncond` get the same chunk count k (at least `min_chunks`, so a caller can give
    prompts of different lengths one length and batch them); without guidance the negative
    prompt is ignored, as the stock pipeline ignores it. For SDXL a negative prompt that is
    empty once its syntax is removed gives zero embeddings where the pipeline's
    `force_zeros_for_empty_prompt` is set, as `encode_prompt(negative_prompt=None)` does.
    Call it under `torch.inference_mode()` (or `no_grad()`) on the pipeline's own thread.
    """
    import torch

    if family not in ("sd", "sdxl"):
        raise ValueError(f"unknown pipeline family {family!r}; expected 'sd' or 'sdxl'")
    convert = converter(pipe)
    if family == "sd":
        cond_chunks = _chunks(pipe.tokenizer, prompt, convert)
        neg_chunks = _chunks(pipe.tokenizer, negative, convert) if cfg else []
        k = max(min_chunks, len(cond_chunks), len(neg_chunks))
        dtype = pipe.text_encoder.dtype
        cond = _encode_sd(pipe, _padded(cond_chunks, k), device, clip_skip)
        cond = cond.to(dtype=dtype, device=device)
        uncond = None
        if cfg:
            uncond = _encode_sd(pipe, _padded(neg_chunks, k), device, clip_skip)
            uncond = repeat(uncond.to(dtype=dtype, device=device), count)
        return Embeddings(cond=repeat(cond, count), uncond=uncond)

    pairs = _sdxl_pairs(pipe)
    zeros = cfg and bool(pipe.config.force_zeros_for_empty_prompt) and _is_empty(negative)
    cond_chunks = [_chunks(t, prompt, convert) for t, _ in pairs]
    neg_chunks = [_chunks(t, negative, convert) for t, _ in pairs] if cfg and not zeros else []
    k = max([min_chunks, *(len(c) for c in cond_chunks + neg_chunks)])
    dtype = (pipe.text_encoder_2 if pipe.text_encoder_2 is not None else pipe.unet).dtype
    cond, pooled = _encode_sdxl(pipe, cond_chunks, k, clip_skip)
    uncond = negative_pooled = None
    if zeros:
        uncond, negative_pooled = torch.zeros_like(cond), torch.zeros_like(pooled)
    elif cfg:
        uncond, negative_pooled = _encode_sdxl(pipe, neg_chunks, k, clip_skip)
    return Embeddings(
        cond=repeat(cond.to(dtype=dtype, device=device), count),
        uncond=None if uncond is None else repeat(uncond.to(dtype=dtype, device=device), count),
        pooled=repeat(pooled, count),
        negative_pooled=None if negative_pooled is None else repeat(negative_pooled, count),
    )
