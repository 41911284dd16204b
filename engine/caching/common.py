"""What every step cache shares: a request's own cache state, the split of a tick's calls into
forwards, and row-wise handling of the denoiser's nested outputs.

Runs on the engine's worker thread only (torch).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..families import DenoiserCall, Family

__all__ = [
    "RequestCache",
    "StepCache",
    "cat_rows",
    "offsets",
    "pad_rows",
    "run",
    "take_rows",
]


@dataclass(eq=False, slots=True)
class RequestCache:
    """One request's step cache, kept between its steps: its pipeline's scheduler (DeepCache's
    phase is a timestep's place in the request's own schedule) and what the method keeps, per
    cache context. A pipeline with true classifier-free guidance names its two denoiser calls
    of a step ("cond", "uncond"); each keeps its own state, as diffusers' cache hooks do."""

    scheduler: Any = None
    contexts: dict[str, Any] = field(default_factory=dict)
    computed: int = 0  # its denoiser calls run in full
    reused: int = 0  # its calls that reused cached features


class StepCache:
    """A step-caching method installed on one model's denoiser. Its hooks on the denoiser's
    blocks do nothing outside `forward`, so a plain call of the module is the stock one."""

    name: str = ""

    def describe(self) -> str:
        """The method and its settings, for the start-up line."""
        raise NotImplementedError

    def state(self, pipe: Any) -> RequestCache:
        """A new request's cache state (`pipe`: the pipeline its call runs on)."""
        return RequestCache(scheduler=getattr(pipe, "scheduler", None))

    def forward(
        self,
        module: Any,
        family: Family,
        calls: Sequence[DenoiserCall],
        states: Sequence[RequestCache | None],
    ) -> list[Any]:
        """Each call's share of the denoiser's output (as `Family.split` gives them). Calls of
        requests without a state (None: not cached) are computed in full. The calls that
        compute and those that reuse run as separate forwards; the states change only once
        every forward has run, so a failed tick changes no request."""
        if all(state is None for state in states):
            return run(module, family, calls)[1]
        return self.cached(module, family, calls, states)

    def cached(
        self,
        module: Any,
        family: Family,
        calls: Sequence[DenoiserCall],
        states: Sequence[RequestCache | None],
    ) -> list[Any]:
        raise NotImplementedError

    def warm(self, call: Any) -> None:
        """Run `call` (a denoiser call at a compiled bucket) every way a tick can run it, so
        that compiling happens at start-up."""
        call()


def run(module: Any, family: Family, calls: Sequence[DenoiserCall]) -> tuple[Any, list[Any]]:
    """ONE forward of the real module over `calls`: its output and each call's share."""
    merged = family.merge(calls)
    output = module(*merged.args, **merged.kwargs)
    return output, family.split(output, calls)


def offsets(family: Family, calls: Sequence[DenoiserCall]) -> list[tuple[int, int]]:
    """Each call's rows in the merged call (merging concatenates them in order)."""
    out, start = [], 0
    for call in calls:
        end = start + family.rows(call)
        out.append((start, end))
        start = end
    return out


def take_rows(value: Any, start: int, end: int) -> Any:
    """Rows `start:end` of a tensor (or of each tensor of a tuple or list), as copies: a
    request keeps only its own rows, not the whole merged batch."""
    if isinstance(value, torch.Tensor):
        return value[start:end].clone()
    if isinstance(value, (tuple, list)):
        return type(value)(take_rows(v, start, end) for v in value)
    return value


def cat_rows(values: Sequence[Any]) -> Any:
    """Several requests' kept values as one batch (the inverse of `take_rows`)."""
    first = values[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(list(values))
    if isinstance(first, (tuple, list)):
        return type(first)(cat_rows([v[i] for v in values]) for i in range(len(first)))
    return first


def pad_rows(value: Any, rows: int) -> Any:
    """`value` with its last row repeated up to `rows` (a compiled bucket pads the batch so)."""
    if isinstance(value, torch.Tensor):
        if value.shape[0] >= rows:
            return value
        extra = value[-1:].expand(rows - value.shape[0], *value.shape[1:])
        return torch.cat([value, extra])
    if isinstance(value, (tuple, list)):
        return type(value)(pad_rows(v, rows) for v in value)
    return value
