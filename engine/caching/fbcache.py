"""First-Block-Cache for diffusion transformers (FLUX.1, FLUX.2, Qwen-Image, SD3, Z-Image),
per request.

First-Block-Cache (ParaAttention; diffusers' `apply_first_block_cache`) runs the first
transformer block and compares its residual (its output less its input) with the residual of
the last step that ran in full: when the relative mean absolute difference is at most
`threshold`, every other block is skipped and the residual they added at that step is added
instead. The blocks are those diffusers' hook takes (the transformer's block lists, in
order), and so are the rules: the first block's output plus the kept residual, the middle
blocks passing their inputs through.

diffusers decides with one scalar for the whole batch. Here each request decides on its own
rows against its own last full step (per cache context: "cond" and "uncond" under true CFG),
so its images do not depend on who shares its forward. A forward runs the first block for
every row; when its requests disagree it stops there, and the tick runs the rows that compute
and the rows that reuse as two forwards, each told its decision.

Runs on the engine's worker thread only (torch).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook

# diffusers' registry of block layouts (which output is the image's, which the text's), the
# one its own first-block-cache hook reads.
from diffusers.hooks._helpers import TransformerBlockRegistry

from ..families import DenoiserCall, Family
from .common import RequestCache, StepCache, offsets, run, take_rows

__all__ = ["FirstBlockCache", "transformer_blocks"]

#: The transformer's block lists diffusers' hook takes (its `_ALL_TRANSFORMER_BLOCK_IDENTIFIERS`).
BLOCK_LISTS = frozenset(
    {
        "blocks",
        "transformer_blocks",
        "single_transformer_blocks",
        "layers",
        "visual_transformer_blocks",
        "temporal_transformer_blocks",
    }
)


@dataclass(frozen=True, slots=True)
class _Kept:
    """A request's state in one context, from its last full step."""

    head_residual: torch.Tensor  # what the first block added
    tail: tuple[torch.Tensor, torch.Tensor | None]  # what the other blocks added (image, text)


class _Diverged(Exception):
    """The requests of a forward disagree: which compute (raised from the first block)."""

    def __init__(self, votes: list[bool]) -> None:
        super().__init__("first-block-cache: requests disagree")
        self.votes = votes


@dataclass(eq=False, slots=True)
class _Forward:
    """What the hooks of one forward share."""

    ranges: list[tuple[int, int]]  # each call's rows
    cached: list[bool]  # whether each call's request is cached
    kept: list[_Kept | None]  # each call's state, if it has one yet
    forced: bool | None  # the decision of one side of a split tick
    compute: bool = True
    head_output: tuple[torch.Tensor, torch.Tensor | None] | None = None
    head_residual: torch.Tensor | None = None
    tail: tuple[torch.Tensor, torch.Tensor | None] | None = None
    votes: list[bool] = field(default_factory=list)


def transformer_blocks(transformer: Any) -> list[tuple[str, Any, Any]]:
    """The blocks diffusers' first-block-cache hooks, with each block's layout; `ValueError`
    naming a block class it does not know, or a transformer of fewer than two blocks."""
    blocks = []
    for name, child in transformer.named_children():
        if name in BLOCK_LISTS and isinstance(child, torch.nn.ModuleList):
            for index, block in enumerate(child):
                try:
                    layout = TransformerBlockRegistry.get(type(block))
                except ValueError:
                    raise ValueError(
                        f"fbcache does not know {type(block).__name__} blocks "
                        f'({type(transformer).__name__}): use cache = "off"'
                    ) from None
                blocks.append((f"{name}.{index}", block, layout))
    if len(blocks) < 2:
        raise ValueError(
            f"fbcache needs a transformer of two blocks or more, not {type(transformer).__name__}"
        )
    return blocks


def _argument(names: list[str], name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Argument `name` of a block's call, by keyword or by its place in `names`."""
    return kwargs[name] if name in kwargs else args[names.index(name)]


def _outputs(layout: Any, output: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    if not isinstance(output, tuple):
        return output, None
    text_index = layout.return_encoder_hidden_states_index
    text = None if text_index is None else output[text_index]
    return output[layout.return_hidden_states_index], text


def _as_output(layout: Any, like: Any, hidden: Any, text: Any) -> Any:
    """`hidden` (and `text`) in the block's output layout."""
    if not isinstance(like, tuple) and layout.return_encoder_hidden_states_index is None:
        return hidden
    out: list[Any] = [None] * (len(like) if isinstance(like, tuple) else 2)
    out[layout.return_hidden_states_index] = hidden
    if layout.return_encoder_hidden_states_index is not None:
        out[layout.return_encoder_hidden_states_index] = text
    return tuple(out)


class _Block(ModelHook):
    """The hook of one block: the first decides, the last keeps the residuals, and while a
    forward reuses the others pass their inputs through."""

    def __init__(self, cache: FirstBlockCache, block: Any, layout: Any, role: str) -> None:
        super().__init__()
        self.cache, self.layout, self.role = cache, layout, role
        self.names = list(inspect.signature(type(block).forward).parameters)[1:]

    def _inputs(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
        """The block's image (and text) input."""
        layout = self.layout
        hidden = _argument(self.names, layout.hidden_states_argument_name, args, kwargs)
        text = None
        if layout.return_encoder_hidden_states_index is not None:
            text = _argument(self.names, layout.encoder_hidden_states_argument_name, args, kwargs)
        return hidden, text

    def new_forward(self, module: Any, *args: Any, **kwargs: Any) -> Any:
        tick = self.cache.tick
        if tick is None:
            return self.fn_ref.original_forward(*args, **kwargs)
        layout = self.layout
        if self.role == "head":
            hidden_in, _ = self._inputs(args, kwargs)
            output = self.fn_ref.original_forward(*args, **kwargs)
            hidden, text = _outputs(layout, output)
            residual = hidden - hidden_in
            tick.compute = self.cache.decide(tick, residual)
            if tick.compute:
                tick.head_output, tick.head_residual = (hidden, text), residual
                return output
            kept = [k for k in tick.kept if k is not None]
            image = torch.cat([k.tail[0] for k in kept]) + hidden
            words = text  # SD3's last block returns no text: nothing to add to it
            if text is not None and kept[0].tail[1] is not None:
                words = torch.cat([k.tail[1] for k in kept]) + text  # type: ignore[misc]
            return _as_output(layout, output, image, words)
        if not tick.compute:  # the middle and last blocks while reusing
            hidden_in, text_in = self._inputs(args, kwargs)
            if text_in is None:
                return hidden_in
            return _as_output(layout, (None, None), hidden_in, text_in)
        output = self.fn_ref.original_forward(*args, **kwargs)
        if self.role == "tail":
            assert tick.head_output is not None
            hidden, text = _outputs(layout, output)
            head_hidden, head_text = tick.head_output
            words = None if text is None or head_text is None else text - head_text
            tick.tail = (hidden - head_hidden, words)
        return output


class FirstBlockCache(StepCache):
    """First-Block-Cache on one transformer, with a state per request (see the module doc)."""

    name = "fbcache"

    def __init__(self, transformer: Any, *, threshold: float) -> None:
        self.threshold = threshold
        self.tick: _Forward | None = None
        self.forwards = {"full": 0, "reuse": 0, "split": 0}
        blocks = transformer_blocks(transformer)
        for index, (_, block, layout) in enumerate(blocks):
            role = "head" if index == 0 else "tail" if index == len(blocks) - 1 else "middle"
            registry = HookRegistry.check_if_exists_or_initialize(block)
            registry.register_hook(_Block(self, block, layout, role), "imagine_fbcache")

    def describe(self) -> str:
        return f"fbcache (threshold {self.threshold:g})"

    def decide(self, tick: _Forward, residual: torch.Tensor) -> bool:
        """Whether the forward computes the other blocks: each cached request's relative
        change of the first block's residual since its last full step over the threshold
        (uncached requests and first steps always compute); `_Diverged` when they disagree."""
        if tick.forced is not None:
            return tick.forced
        votes = []
        for (start, end), cached, kept in zip(tick.ranges, tick.cached, tick.kept, strict=True):
            if not cached or kept is None:
                votes.append(True)
                continue
            previous = kept.head_residual
            change = (residual[start:end] - previous).abs().mean() / previous.abs().mean()
            votes.append(change.item() > self.threshold)
        tick.votes = votes
        if all(votes) or not any(votes):
            return votes[0]
        raise _Diverged(votes)

    def cached(
        self,
        module: Any,
        family: Family,
        calls: Sequence[DenoiserCall],
        states: Sequence[RequestCache | None],
    ) -> list[Any]:
        shares: list[Any] = [None] * len(calls)
        commits: list[tuple[int, _Kept | None]] = []
        try:
            shares, commits = self._forward(module, family, calls, states, None)
        except _Diverged as split:
            self.forwards["split"] += 1
            for decision in (True, False):
                chosen = [i for i, vote in enumerate(split.votes) if vote is decision]
                parts, done = self._forward(
                    module,
                    family,
                    [calls[i] for i in chosen],
                    [states[i] for i in chosen],
                    decision,
                )
                for i, part in zip(chosen, parts, strict=True):
                    shares[i] = part
                commits += [(chosen[j], kept) for j, kept in done]
        for i, kept in commits:  # every forward ran: the requests' states move on
            state = states[i]
            assert state is not None
            if kept is None:
                state.reused += 1
            else:
                state.contexts[calls[i].context] = kept
                state.computed += 1
        return shares

    def _forward(
        self,
        module: Any,
        family: Family,
        calls: Sequence[DenoiserCall],
        states: Sequence[RequestCache | None],
        forced: bool | None,
    ) -> tuple[list[Any], list[tuple[int, _Kept | None]]]:
        """One forward over `calls`; each cached call's new state (None: it reused)."""
        kept = [
            None if s is None else s.contexts.get(c.context)
            for c, s in zip(calls, states, strict=True)
        ]
        tick = _Forward(offsets(family, calls), [s is not None for s in states], kept, forced)
        self.tick = tick
        try:
            parts = run(module, family, calls)[1]
        finally:
            self.tick = None
        self.forwards["full" if tick.compute else "reuse"] += 1
        commits: list[tuple[int, _Kept | None]] = []
        for i, (start, end) in enumerate(tick.ranges):
            if states[i] is None:
                continue
            if not tick.compute:
                commits.append((i, None))
                continue
            if tick.head_residual is None or tick.tail is None:
                raise RuntimeError("fbcache: the transformer's blocks did not run as hooked")
            residual = take_rows(tick.head_residual, start, end)
            commits.append((i, _Kept(residual, take_rows(tick.tail, start, end))))
        return parts, commits
