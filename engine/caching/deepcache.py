"""DeepCache for UNets (SD 1.x/2.x, SDXL), per request.

DeepCache (Ma et al., 2023; the `DeepCache` package's `DeepCacheSDHelper`) computes the whole
UNet every `interval` steps and, in between, only its shallow part: the down path up to the
cache branch and the up path from there, with the deep feature the branch would have read
taken from the last full step. Branch `b` is block `b // 3`, layer `b % 3` of the down and up
paths (0: the outermost layer, the cheapest steps).

The package keeps one cache and one step counter for the whole batch (it reads the batch's
one timestep with `.item()`). Here each request keeps its own: its phase is its timestep's
place in its own schedule counted from its first call (the package's rule), and the deep
feature is its own rows of its own last full step. A tick runs the rows that compute in full
and the rows that reuse as two forwards of the UNet.

The hooks sit on the modules the package skips whose parent still runs (whole deep blocks,
the middle block, the deep layers of the branch's blocks). In a full forward they record the
shape of what they return and, on the module just before the branch's entry (the source),
the feature itself. In a reuse forward the source returns the requests' kept features and
the others return zeros of their recorded shape (read by nothing that is computed: the
package returns stale features there, equally unused), so no deep layer runs and no request
holds more than one feature per context.

Runs on the engine's worker thread only (torch).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook

from ..families import DenoiserCall, Family
from .common import RequestCache, StepCache, cat_rows, offsets, pad_rows, run, take_rows

__all__ = ["DeepCache", "skipped_modules"]


@dataclass(frozen=True, slots=True)
class _Kept:
    """A request's DeepCache state in one context."""

    start: int  # the place of its first timestep in its schedule
    feature: Any  # the source's output for its rows at its last full step


def skipped_modules(unet: Any, branch: int) -> tuple[list[tuple[str, Any]], str]:
    """The modules a reuse forward skips whose parent runs, by name, in forward order, and
    the name of the source (whose output the branch's entry reads), as `DeepCacheSDHelper`
    decides them; `ValueError` when the UNet has no such branch."""
    block, layer = branch // 3, branch % 3
    downs, ups = list(unet.down_blocks), list(unet.up_blocks)
    if block >= len(downs) or block >= len(ups):
        raise ValueError(
            f"cache_branch {branch} is past this UNet's branches (0 to {3 * len(downs) - 1})"
        )
    out: list[tuple[str, Any]] = []
    for i, down in enumerate(downs):
        if i > block or (i == block and layer == 0):  # the whole block
            out.append((f"down_blocks.{i}", down))
        elif i == block:
            resnets = list(down.resnets)
            out += [
                (f"down_blocks.{i}.attentions.{j}", a)
                for j, a in enumerate(getattr(down, "attentions", None) or [])
                if j >= layer
            ]
            out += [
                (f"down_blocks.{i}.resnets.{j}", r) for j, r in enumerate(resnets) if j >= layer
            ]
            if len(resnets) >= layer:
                out += [
                    (f"down_blocks.{i}.downsamplers.{j}", d)
                    for j, d in enumerate(getattr(down, "downsamplers", None) or [])
                ]
    if unet.mid_block is not None:
        out.append(("mid_block", unet.mid_block))
    source = "mid_block"
    for position, up in enumerate(ups):
        i = len(ups) - position - 1  # the package counts up blocks from the output
        if i > block:
            out.append((f"up_blocks.{position}", up))
            source = f"up_blocks.{position}"
        elif i == block:
            layers = len(up.resnets)
            attentions = list(getattr(up, "attentions", None) or [])
            for j in range(layers):
                if layers - j - 1 > layer:  # its deep layers (the first ones it runs)
                    if j < len(attentions):
                        out.append((f"up_blocks.{position}.attentions.{j}", attentions[j]))
                    out.append((f"up_blocks.{position}.resnets.{j}", up.resnets[j]))
                    kind = "attentions" if j < len(attentions) else "resnets"
                    source = f"up_blocks.{position}.{kind}.{j}"
    return out, source


def _rows_run(module: Any, rows: int) -> int:
    """The rows a forward of `rows` rows runs at: its compiled bucket's, when it has one
    (`acceleration.BucketedForward` pads every call to the smallest bucket that holds it)."""
    buckets = getattr(getattr(module, "forward", None), "buckets", None) or ()
    return min((b for b in buckets if b >= rows), default=rows)


def _hidden(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    value = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
    assert isinstance(value, torch.Tensor)
    return value


def _signature(value: Any) -> Any:
    """What a module's output shape depends on: its inputs' shapes without the batch, and
    its plain values (an upsampling size)."""
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape[1:]))
    if isinstance(value, (tuple, list)):
        return tuple(_signature(v) for v in value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return type(value).__name__


def _structure(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return (tuple(value.shape[1:]), value.dtype, value.device)
    if isinstance(value, (tuple, list)):
        return [type(value), *(_structure(v) for v in value)]
    if value is None:
        return None
    raise TypeError(f"DeepCache cannot stand in for a {type(value).__name__} output")


def _placeholder(structure: Any, rows: int) -> Any:
    """Zeros shaped like a recorded output, for `rows` rows (no memory: a broadcast zero)."""
    if structure is None:
        return None
    if isinstance(structure, list):
        kind, *parts = structure
        return kind(_placeholder(p, rows) for p in parts)
    shape, dtype, device = structure
    return torch.zeros((), dtype=dtype, device=device).expand(rows, *shape)


class _Skipped(ModelHook):
    """The hook of one module a reuse forward skips."""

    def __init__(self, cache: DeepCache, name: str, source: bool) -> None:
        super().__init__()
        self.cache, self.name, self.source = cache, name, source

    def new_forward(self, module: Any, *args: Any, **kwargs: Any) -> Any:
        cache = self.cache
        named = tuple((name, _signature(kwargs[name])) for name in sorted(kwargs))
        key = (self.name, _signature(args), named)
        if cache.reusing:
            rows = _hidden(args, kwargs).shape[0]
            if self.source:
                return pad_rows(cache.feature, rows)
            structure = cache.shapes.get(key)
            if structure is None:
                raise RuntimeError(f"DeepCache: no full forward recorded {self.name} at this size")
            return _placeholder(structure, rows)
        output = self.fn_ref.original_forward(*args, **kwargs)
        if self.source:
            cache.captured = output
        elif key not in cache.shapes:  # once: compiled graphs then guard on it, never write
            cache.shapes[key] = _structure(output)
        return output


class DeepCache(StepCache):
    """DeepCache on one UNet, with a state per request (see the module doc)."""

    name = "deepcache"

    def __init__(self, unet: Any, *, interval: int, branch: int) -> None:
        self.interval, self.branch = interval, branch
        self.reusing = False  # the hooks' mode during a forward
        self.feature: Any = None  # reuse: the source's output for the forward's rows
        self.captured: Any = None  # full: the source's output of the latest forward
        self.shapes: dict[Any, Any] = {}
        self.forwards = {"full": 0, "reuse": 0}
        modules, source = skipped_modules(unet, branch)
        if source not in dict(modules):
            raise ValueError(f"cache_branch {branch}: this UNet has no block to cache there")
        for name, module in modules:
            registry = HookRegistry.check_if_exists_or_initialize(module)
            registry.register_hook(_Skipped(self, name, name == source), "imagine_deepcache")
        self.skipped = [name for name, _ in modules]
        self.source = source

    def describe(self) -> str:
        return f"deepcache (interval {self.interval}, branch {self.branch})"

    def cached(
        self,
        module: Any,
        family: Family,
        calls: Sequence[DenoiserCall],
        states: Sequence[RequestCache | None],
    ) -> list[Any]:
        places = [self._place(family, c, s) for c, s in zip(calls, states, strict=True)]
        plan = [self._reuses(c, s, p) for c, s, p in zip(calls, states, places, strict=True)]
        shares: list[Any] = [None] * len(calls)
        commits: list[tuple[int, Any]] = []
        for reuse in (False, True):
            chosen = [i for i, r in enumerate(plan) if r is reuse]
            if not chosen:
                continue
            group = [calls[i] for i in chosen]
            if reuse:
                kept = [states[i].contexts[calls[i].context] for i in chosen]  # type: ignore[union-attr]
                feature = cat_rows([k.feature for k in kept])
                # At a compiled bucket's rows already: one graph whatever the real rows.
                self.feature = pad_rows(feature, _rows_run(module, offsets(family, group)[-1][1]))
                self.reusing = True
            try:
                parts = run(module, family, group)[1]
            finally:
                self.reusing, self.feature = False, None
            captured, self.captured = self.captured, None
            self.forwards["reuse" if reuse else "full"] += 1
            for i, part, (start, end) in zip(chosen, parts, offsets(family, group), strict=True):
                shares[i] = part
                if states[i] is not None:
                    commits.append((i, None if reuse else take_rows(captured, start, end)))
        for i, feature in commits:  # every forward ran: the requests' states move on
            state, context = states[i], calls[i].context
            assert state is not None
            before = state.contexts.get(context)
            if feature is None:
                state.reused += 1
            else:
                start = places[i] if before is None else before.start
                state.contexts[context] = _Kept(start, feature)
                state.computed += 1
        return shares

    def _reuses(self, call: DenoiserCall, state: RequestCache | None, place: int) -> bool:
        """Whether the request's call is between its full steps (its phase, not the batch's)."""
        kept = None if state is None else state.contexts.get(call.context)
        return kept is not None and (place - kept.start) % self.interval != 0

    @staticmethod
    def _place(family: Family, call: DenoiserCall, state: RequestCache | None) -> int:
        """The place of the call's timestep in its request's schedule (the first place, as
        `DeepCacheSDHelper` finds it: a repeated timestep counts where it first is); its
        count of calls when the schedule does not hold it."""
        if state is None:
            return 0
        calls = state.computed + state.reused
        timestep = family.arguments(call).get("timestep")
        schedule = getattr(state.scheduler, "timesteps", None)
        if not isinstance(timestep, torch.Tensor) or not isinstance(schedule, torch.Tensor):
            return calls
        value = timestep.reshape(-1)[0].item()
        found = torch.nonzero(schedule.detach().cpu() == value)
        return int(found[0, 0]) if len(found) else calls

    def warm(self, call: Any) -> None:
        """At a compiled bucket: an uncompiled forward that records the skipped modules'
        shapes (compiled code then only reads them), then the full and the reuse forwards,
        each compiled once."""
        stance = getattr(torch.compiler, "set_stance", None)  # torch 2.6+
        if stance is not None:
            with stance("force_eager"):
                call()
        call()
        feature, self.captured = self.captured, None
        self.feature, self.reusing = feature, True
        try:
            call()
        finally:
            self.reusing, self.feature = False, None
