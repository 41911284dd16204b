"""Step caching per request inside step-level batching (`[models.<name>] cache`).

Step caches reuse the denoiser's deep features between denoising steps: DeepCache for UNets
(`deepcache.py`), First-Block-Cache for diffusion transformers (`fbcache.py`). Their published
implementations keep one cache and one step counter for the whole batch, which cannot work
when a batch mixes requests at different steps. Here every request keeps its own
(`RequestCache`: its own features, its own phase), and a tick splits its waiting denoiser
calls into the rows that compute in full and the rows that reuse, each run as its own
forward: a request's images are the same alone or beside others at any steps, and requests
that do not ask for the cache are computed as without one.

Batch scheduling uses the same logic (`batch_pipeline`): the denoiser of a batch's pipeline
call cuts each call into its requests' rows and runs them through the same per-request cache;
requests of one batch share their steps, so their phases match and they share forwards.

Runs on the engine's worker thread only (torch).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from ..config import ModelSpec
from ..families import DenoiserCall, Family
from .common import RequestCache, StepCache

__all__ = ["FBCACHE_FAMILIES", "RequestCache", "StepCache", "batch_pipeline", "install"]

#: The families First-Block-Cache serves, by name. Not Chroma (diffusers knows no layout of
#: its blocks), nor Z-Image (a batch pads every caption to its longest, so a request's
#: residuals would depend on its neighbours), nor FLUX.2 [klein] (its last blocks see text
#: and image tokens as one sequence, the first block only the image's).
FBCACHE_FAMILIES = frozenset({"flux", "qwenimage", "sd3"})


def install(spec: ModelSpec, pipe: Any, family: Family) -> StepCache | None:
    """The model's step cache, hooked into its denoiser (None when `cache = "off"`); a
    one-line `ValueError` when its denoiser cannot take the method."""
    if spec.cache == "off":
        return None
    module = getattr(pipe, family.denoiser)
    kind = type(module).__name__
    if spec.cache == "deepcache":
        if family.denoiser != "unet" or not hasattr(module, "up_blocks"):
            raise ValueError(
                f'cache = "deepcache" is for UNet models (SD, SDXL), not {kind}: use "fbcache"'
            )
        from .deepcache import DeepCache

        return DeepCache(module, interval=spec.cache_interval, branch=spec.cache_branch)
    if family.denoiser != "transformer":
        raise ValueError(
            f'cache = "fbcache" is for diffusion transformers, not {kind}: use "deepcache"'
        )
    if family.name not in FBCACHE_FAMILIES:
        raise ValueError(f'cache = "fbcache" does not serve {family.label} models yet')
    from .fbcache import FirstBlockCache

    return FirstBlockCache(module, threshold=spec.cache_threshold)


class BatchDenoiser:
    """The denoiser of one batch-scheduled pipeline call whose requests are cached: each call
    is cut into each request's rows (a guided call holds the negative rows of every image,
    then the positive ones), run through the per-request cache, and put back in order."""

    def __init__(
        self,
        module: Any,
        family: Family,
        cache: StepCache,
        counts: Sequence[int],
        states: Sequence[RequestCache | None],
    ) -> None:
        self.module, self.family, self.cache = module, family, cache
        self.counts, self.states = list(counts), list(states)
        self.context = ""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        call = DenoiserCall(args, kwargs, self.context)
        rows, images = self.family.rows(call), sum(self.counts)
        if rows % images:
            raise ValueError(f"a denoiser call of {rows} rows for {images} images")
        blocks = rows // images
        parts, order, first = [], [], 0
        for count in self.counts:
            index = [b * images + first + j for b in range(blocks) for j in range(count)]
            parts.append(call if len(self.counts) == 1 else self.family.take(call, index))
            order += index
            first += count
        shares = self.cache.forward(self.module, self.family, parts, self.states)
        noise = [s[0] if isinstance(s, (tuple, list)) else s.sample for s in shares]
        back = sorted(range(rows), key=order.__getitem__)  # merged row of each original row
        if isinstance(noise[0], torch.Tensor):
            joined = torch.cat(noise)
            out: Any = joined[torch.as_tensor(back, device=joined.device)]
        else:  # per-sample lists
            flat = [item for part in noise for item in part]
            out = [flat[i] for i in back]
        return self.family.wrap(out) if kwargs.get("return_dict", True) else (out,)

    @contextmanager
    def cache_context(self, name: str, **_: Any) -> Iterator[None]:
        """diffusers' `ModelMixin.cache_context`: the name goes with the calls inside."""
        before, self.context = self.context, name
        try:
            yield
        finally:
            self.context = before

    def __getattr__(self, name: str) -> Any:
        return getattr(self.module, name)


def batch_pipeline(
    pipe: Any, family: Family, cache: StepCache, requests: Sequence[Any]
) -> tuple[Any, list[RequestCache | None]]:
    """A shallow copy of `pipe` whose denoiser caches `requests`' fast ones (one batch's),
    and their cache states."""
    own = copy.copy(pipe)
    states = [cache.state(own) if r.fast else None for r in requests]
    module = getattr(pipe, family.denoiser)
    denoiser = BatchDenoiser(module, family, cache, [r.count for r in requests], states)
    object.__setattr__(own, family.denoiser, denoiser)  # past diffusers' config bookkeeping
    return own, states
