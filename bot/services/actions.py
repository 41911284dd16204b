"""What a member can ask of a job: `/imagine` (and `/edit`), and the job buttons' actions.

`JobActions` is the job service's face towards the Discord surface: the `/imagine` cog and a
button press call it, never the job service itself (`jobs/actions.py` answers it). `Action`
names the buttons' actions, as their custom ids carry them (`presentation/buttons.py`), and a
`Press` is one press of one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Protocol

import discord

from ..ledger import JobRef
from .options import ImagineOptions

__all__ = ["PER_IMAGE", "Action", "JobActions", "Press"]


class Action(enum.StrEnum):
    REROLL = "reroll"
    DELETE = "delete"
    CANCEL = "cancel"
    UPSCALE = "u"  # with the image's index: u0..u9
    VARY_SUBTLE = "vs"
    VARY_STRONG = "vx"
    EDIT = "e"  # with the image's index: opens a modal asking what to change


#: Actions that act on one image of the result, named by its index in the custom id.
PER_IMAGE = frozenset({Action.UPSCALE, Action.VARY_SUBTLE, Action.VARY_STRONG, Action.EDIT})


@dataclass(frozen=True, slots=True)
class Press:
    """A press of a job button: its action, the job, and the image (`PER_IMAGE` actions);
    `text` is what the member typed into the modal the press opened (Edit's instruction)."""

    action: Action
    job: JobRef
    index: int | None = None
    text: str | None = None


class JobActions(Protocol):
    """What `/imagine` and the job buttons ask of the job service."""

    async def imagine(
        self, interaction: discord.Interaction[Any], options: ImagineOptions
    ) -> None: ...

    async def reroll(self, interaction: discord.Interaction[Any], job: JobRef) -> None: ...

    async def delete(self, interaction: discord.Interaction[Any], job: JobRef) -> None: ...

    async def cancel(self, interaction: discord.Interaction[Any], job: JobRef) -> None: ...

    async def upscale(
        self, interaction: discord.Interaction[Any], job: JobRef, index: int
    ) -> None: ...

    async def vary(
        self, interaction: discord.Interaction[Any], job: JobRef, index: int, *, strong: bool
    ) -> None: ...

    async def ask_edit(
        self, interaction: discord.Interaction[Any], job: JobRef, index: int
    ) -> None: ...

    async def edit(
        self, interaction: discord.Interaction[Any], job: JobRef, index: int, instruction: str
    ) -> None: ...
