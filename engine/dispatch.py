"""Batching the denoiser calls of many requests' own pipeline calls, on one thread.

Each request runs the stock diffusers pipeline call as a `RequestRun` (a greenlet on the
worker thread), on a pipeline of its own whose denoiser (the UNet or transformer) is a
`DenoiserProxy`. When its pipeline calls the denoiser, the call is handed to the step loop
instead of running, and the request waits there; the step loop runs ONE forward of the real
module (its hooks included) over the waiting calls of every request of a group, and hands
each request its share, which its pipeline then steps with its own scheduler. Greenlets,
not threads: the pipelines stay with the engine's one worker thread, which switches between
them explicitly.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import greenlet

from .families import DenoiserCall

__all__ = ["DenoiserProxy", "RequestRun", "with_proxy"]


class RequestRun(greenlet.greenlet):
    """One request's stock pipeline call, run until its denoiser is called."""


class DenoiserProxy:
    """The denoiser as one request's pipeline sees it: calling it inside the request's run
    hands the call to the step loop and returns the request's share of the batched result;
    everything else (its config, dtype, device) is the real module's. The pipeline's cache
    context ("cond", "uncond") goes with each call instead of onto the shared module, where
    other requests' runs would see it."""

    __slots__ = ("context", "module")

    def __init__(self, module: Any) -> None:
        object.__setattr__(self, "module", module)
        object.__setattr__(self, "context", "")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        current = greenlet.getcurrent()
        if isinstance(current, RequestRun):
            assert current.parent is not None
            return current.parent.switch(DenoiserCall(args, kwargs, self.context))
        return self.module(*args, **kwargs)

    @contextmanager
    def cache_context(self, name: str, **_: Any) -> Iterator[None]:
        """diffusers' `ModelMixin.cache_context`, for this request's calls only."""
        before = self.context
        object.__setattr__(self, "context", name)
        try:
            yield
        finally:
            object.__setattr__(self, "context", before)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.module, name)


def with_proxy(pipe: Any, denoiser: str) -> Any:
    """`pipe` (a request's own copy) with its denoiser attribute behind a `DenoiserProxy`
    (set past diffusers' own `__setattr__`, which would record it in the shared config)."""
    object.__setattr__(pipe, denoiser, DenoiserProxy(getattr(pipe, denoiser)))
    return pipe
