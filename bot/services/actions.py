"""What a member can ask of a job: `/imagine` (and `/edit`), and the job buttons' actions.

`JobActions` is the job service's face towards the Discord surface: the `/imagine` cog and a
button press call it, never the job service itself (`jobs/actions.py` answers it). `Action`
names the buttons' actions, as their custom ids carry them (`presentation/buttons.py`), and a
`Press` is one press of one. Custom zoom and Vary (Region) first ask for words in a modal: their
press comes back with the modal's `answers`. Describe is answered by the surface itself (the
`/describe` answer, `surface/cogs/describe.py`): the job actions only check the press and hand
it the kept picture (`picture`); so is Show mask (the kept mask, `mask`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import discord

from ..images.pictures import PictureRef
from ..ledger import JobRef
from .options import ImagineOptions

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["ASKS", "CANVAS", "PER_IMAGE", "UPSCALES", "Action", "JobActions", "Press"]


class Action(enum.StrEnum):
    REROLL = "reroll"
    DELETE = "delete"
    CANCEL = "cancel"
    UPSCALE = "u"  # with the image's index: u0..u9
    VARY_SUBTLE = "vs"
    VARY_STRONG = "vx"
    EDIT = "e"  # with the image's index: opens a modal asking what to change
    UPSCALE_SUBTLE = "us"  # the GAN upscaler alone ([upscale] model)
    UPSCALE_CREATIVE = "uc"  # the GAN upscaler, then the refinement
    ZOOM_2 = "zo"  # zoom out 2x
    ZOOM_15 = "zh"  # zoom out 1.5x
    ZOOM_CUSTOM = "zc"  # zoom out by a factor asked in a modal
    PAN_LEFT = "pl"
    PAN_RIGHT = "pr"
    PAN_UP = "pu"
    PAN_DOWN = "pd"
    REGION = "rg"  # Vary (Region): which part, and what instead, asked in a modal
    FIX = "ff"  # Fix faces: the faces the detector finds inpainted again ([fix] detector)
    FIX_HANDS = "fh"  # Fix hands: the same with the hands ([fix] hands_detector)
    DESCRIBE = "ds"  # four prompts for the image, privately ([describe] model); no job
    MASK = "mask"  # the mask a canvas job used, privately; no job


#: The canvas actions: an inpainting of one image (zoom out, pan, a region or the faces made
#: anew).
CANVAS = frozenset(
    {
        Action.ZOOM_2,
        Action.ZOOM_15,
        Action.ZOOM_CUSTOM,
        Action.PAN_LEFT,
        Action.PAN_RIGHT,
        Action.PAN_UP,
        Action.PAN_DOWN,
        Action.REGION,
        Action.FIX,
        Action.FIX_HANDS,
    }
)
#: The upscales: the hires fix, and with a GAN upscaler configured, subtle and creative.
UPSCALES = frozenset({Action.UPSCALE, Action.UPSCALE_SUBTLE, Action.UPSCALE_CREATIVE})
#: Actions that first ask for words in a modal (the press returns with its `answers`).
ASKS = frozenset({Action.ZOOM_CUSTOM, Action.REGION, Action.EDIT})
#: Actions that act on one image of the result, named by its index in the custom id.
PER_IMAGE = frozenset(
    {
        Action.UPSCALE,
        Action.VARY_SUBTLE,
        Action.VARY_STRONG,
        *UPSCALES,
        *CANVAS,
        Action.EDIT,
        Action.DESCRIBE,
    }
)


@dataclass(frozen=True, slots=True)
class Press:
    """A press of a job button: its action, the job, and the image (`PER_IMAGE` actions);
    `answers` are what the member typed into the modal the press opened (Edit's instruction,
    Custom Zoom's factor, Vary (Region)'s part and what instead)."""

    action: Action
    job: JobRef
    index: int | None = None
    answers: Mapping[str, str] | None = None  # an `ASKS` action's modal, filled in


class JobActions(Protocol):
    """What `/imagine` and the job buttons ask of the job service."""

    async def imagine(
        self, interaction: discord.Interaction[Any], options: ImagineOptions
    ) -> None: ...

    async def reroll(self, interaction: discord.Interaction[Any], job: JobRef) -> None: ...

    async def delete(self, interaction: discord.Interaction[Any], job: JobRef) -> None: ...

    async def cancel(self, interaction: discord.Interaction[Any], job: JobRef) -> None: ...

    async def mask(self, interaction: discord.Interaction[Any], job: JobRef) -> bytes: ...

    async def upscale(
        self,
        interaction: discord.Interaction[Any],
        job: JobRef,
        index: int,
        how: Action = Action.UPSCALE,
    ) -> None:
        """`how`: one of `UPSCALES` (the hires fix, the GAN alone, the GAN refined)."""
        ...

    async def canvas(
        self,
        interaction: discord.Interaction[Any],
        job: JobRef,
        index: int,
        action: Action,
        answers: Mapping[str, str],
    ) -> None:
        """A `CANVAS` action on image `index` of `job` (`answers`: its modal's, if it asks):
        Zoom Out, Pan, Vary (Region) or Fix faces."""
        ...

    async def inpaint(
        self,
        interaction: discord.Interaction[Any],
        picture: PictureRef,
        mask: PictureRef,
        prompt: str,
        model: str | None = None,
    ) -> None:
        """`/inpaint`: `picture` made anew where `mask` is white, to show `prompt`."""
        ...

    async def vary(
        self, interaction: discord.Interaction[Any], job: JobRef, index: int, *, strong: bool
    ) -> None: ...

    async def ask_edit(
        self, interaction: discord.Interaction[Any], job: JobRef, index: int
    ) -> None: ...

    async def edit(
        self, interaction: discord.Interaction[Any], job: JobRef, index: int, instruction: str
    ) -> None: ...

    async def picture(
        self, interaction: discord.Interaction[Any], job: JobRef, index: int, action: Action
    ) -> Image:
        """Image `index` of `job` at full size, for a press the surface answers itself
        (Describe), once the checks every image button passes have passed (the presser's own
        result or a moderator's, on its own message, offered, still kept). It answers nothing:
        the surface has deferred the interaction."""
        ...
