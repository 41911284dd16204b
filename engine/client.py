"""The engine's face: what a front end (the bot, the command line) may call, whichever
backend runs the models.

    checked = await engine.check(request)      # validated once, every default resolved
    job = engine.submit(checked, job_id="42")  # queued as it is; Busy / EngineDead at once
    result = await job.result()                # or job.cancel()

`Checked` is a type of its own, made only by `check`, so a request that was not checked
cannot be submitted, and a checked one is never validated again (which once refused every
`ar:` request: the resolved size and the aspect ratio clashed on the second pass). The local
`Engine` and the Ray backend's `RayEngine` both satisfy `EngineClient`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .catalog import ModelInfo
from .config import EngineConfig, Limits
from .job import Job
from .profile import ModelProfile
from .request import ImageRequest
from .result import GenerationResult
from .stats import EngineStats

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["Checked", "EngineClient"]


@dataclass(frozen=True, slots=True)
class Checked:
    """A request as the engine's validation resolved it (every field filled in: model, size,
    steps, seed...), with the warnings to show its requester. Made by `check` only."""

    request: ImageRequest
    warnings: tuple[str, ...] = ()


class EngineClient(Protocol):
    """What the bot asks of an engine (see the module doc)."""

    config: EngineConfig
    limits: Limits
    stats: EngineStats

    async def start(self) -> None: ...

    async def close(self, grace_s: float = 60.0) -> None: ...

    async def check(self, request: ImageRequest) -> Checked:
        """Validate and resolve `request` (off the event loop); `InvalidRequest` names the
        field. Raises `EngineDead`/`EngineUnavailable` when no engine can answer."""
        ...

    def submit(self, checked: Checked, *, job_id: str | None = None) -> Job:
        """Queue `checked` as it is; `Busy`, `ShuttingDown`, `EngineDead` at once."""
        ...

    async def generate(self, request: ImageRequest) -> GenerationResult:
        """Check, submit and wait (cancels the job if the caller is cancelled)."""
        ...

    async def describe(self, picture: Image, style: str = "") -> list[str]:
        """Up to four candidate prompts for a picture in `style` ("prose": `[describe] model`;
        "tags": `[describe] tagger`; "": the first configured), off the event loop;
        `EngineError` when that style is off or its model cannot load."""
        ...

    async def region_mask(self, image: Image, words: str) -> Image:
        """The mask of where `image` shows what `words` name (`[region] model`);
        `InvalidRequest` when it finds nothing there."""
        ...

    async def gan_upscale(self, image: Image) -> Image:
        """`image` enlarged by the GAN upscaler (`[upscale] model`); `InvalidRequest` when
        none is configured."""
        ...

    async def detect_faces(self, image: Image) -> list[tuple[int, int, int, int]]:
        """The faces' boxes in `image`, best first (`[fix] detector`; empty: none found);
        `InvalidRequest` when no detector is configured."""
        ...

    async def detect(self, image: Image, target: str) -> list[tuple[int, int, int, int]]:
        """`detect_faces` for `target` "faces" or "hands" (`[fix] hands_detector`)."""
        ...

    # The models
    @property
    def default_model(self) -> str: ...

    @property
    def model_names(self) -> list[str]: ...

    def models(self) -> Sequence[ModelInfo]: ...

    def profile_of(self, model: str | None) -> ModelProfile: ...

    def scheduler_of(self, model: str | None) -> str: ...

    # Health and load
    @property
    def scheduling(self) -> str:
        """ "batch" or "step"."""
        ...

    @property
    def alive(self) -> bool: ...

    @property
    def queue_depth(self) -> int: ...

    @property
    def running(self) -> tuple[Job, ...]: ...

    def backend(self) -> dict[str, Any]:
        """What runs the engine, for `/healthz` and `/metrics`."""
        ...
