"""Buttons that keep working after a restart: Upscale, Vary, Edit, Describe, Reroll and Delete
on results (U1-U4, V1-V4, E1-E4 and D1-D4 on a grid), Zoom Out, Pan, Vary (Region) and Fix
faces on one image, Show mask on what those made, Cancel on progress.

Each `custom_id` is `imagine:<action>:<job id>:<job key>` (a `JobRef`; buttons posted before
keys existed have no key), and an image's buttons add its index to the action (`u2`, `vx0`);
the job is looked up when the button is pressed, so no view object has to survive in memory
(discord.py's `DynamicItem`). One item class serves every action through a table, so a new
button is one row. What a result offers depends on its job's kind (`OFFERED`): the same
table builds the view and decides whether a press may run, since a custom id can be forged
onto any message. A press is handed to the Discord surface (`ServiceHost.press`, answered by
`surface/presses.py`), which calls the job service and reports errors.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import discord

from ..ledger import JobKind, JobRef
from ..services import CANVAS, PER_IMAGE, UPSCALES, Action, Press, host_of

__all__ = [
    "OFFERED",
    "JobButton",
    "label_of",
    "offered",
    "progress_view",
    "result_view",
]


_MADE = frozenset(
    {
        *UPSCALES,
        Action.VARY_SUBTLE,
        Action.VARY_STRONG,
        Action.REROLL,
        Action.DELETE,
        *CANVAS,
        Action.EDIT,
        Action.DESCRIBE,
    }
)
#: What a result of each kind offers. An upscale offers no Upscale (it is as large as it
#: gets) and no Reroll (another upscale would be recorded, and charged, as an image). The
#: canvas actions are offered only on one image and by a model that inpaints (`result_view`);
#: what they made offers its mask, on request (the bot posts nothing it was not asked for).
OFFERED: Mapping[JobKind, frozenset[Action]] = {
    JobKind.IMAGINE: _MADE,
    JobKind.VARIATION: _MADE,
    JobKind.EDIT: _MADE,
    JobKind.ZOOM: _MADE | {Action.MASK},
    JobKind.PAN: _MADE | {Action.MASK},
    JobKind.REGION: _MADE | {Action.MASK},
    JobKind.FIX: _MADE | {Action.MASK},
    JobKind.UPSCALE: frozenset(
        {
            Action.VARY_SUBTLE,
            Action.VARY_STRONG,
            Action.DELETE,
            Action.EDIT,
            Action.DESCRIBE,
            *CANVAS,
        }
    ),
}


def offered(
    kind: JobKind,
    *,
    upscalable: bool = True,
    canvas: bool = True,
    region: bool = True,
    gan: bool = True,
    editable: bool = True,
    fix: bool = True,
    hands: bool = True,
    describable: bool = True,
) -> frozenset[Action]:
    """The actions on a result of `kind` (`upscalable`: its images can get any larger;
    `canvas`: its model inpaints, for Zoom Out, Pan, Vary (Region) and Fix faces; `region`:
    a region model finds the part named in words; `gan`: a GAN upscaler makes Upscale
    (subtle) and (creative); `editable`: a configured model edits pictures by instruction;
    `fix`: a face detector finds the faces to fix; `hands`: a hand detector the hands;
    `describable`: a describe model turns a picture into prompts)."""
    actions = OFFERED[kind]
    if not upscalable:
        actions -= UPSCALES
    if not gan:
        actions -= {Action.UPSCALE_SUBTLE, Action.UPSCALE_CREATIVE}
    if not canvas:
        actions -= CANVAS
    if not region:
        actions -= {Action.REGION}
    if not fix:
        actions -= {Action.FIX}
    if not hands:
        actions -= {Action.FIX_HANDS}
    if not describable:
        actions -= {Action.DESCRIBE}
    return actions if editable else actions - {Action.EDIT}


@dataclass(frozen=True, slots=True)
class _Look:
    label: str
    emoji: str | None
    style: discord.ButtonStyle


_SECONDARY = discord.ButtonStyle.secondary
_LOOKS: dict[Action, _Look] = {
    Action.REROLL: _Look("Reroll", "\N{GAME DIE}", discord.ButtonStyle.secondary),
    Action.DELETE: _Look("Delete", "\N{WASTEBASKET}", discord.ButtonStyle.danger),
    Action.CANCEL: _Look("Cancel", None, discord.ButtonStyle.secondary),
    Action.UPSCALE: _Look("Upscale", None, discord.ButtonStyle.primary),
    Action.UPSCALE_SUBTLE: _Look("Upscale (subtle)", None, discord.ButtonStyle.primary),
    Action.UPSCALE_CREATIVE: _Look("Upscale (creative)", None, discord.ButtonStyle.primary),
    Action.VARY_SUBTLE: _Look("Vary (subtle)", None, discord.ButtonStyle.secondary),
    Action.VARY_STRONG: _Look("Vary (strong)", None, discord.ButtonStyle.secondary),
    Action.EDIT: _Look("Edit", "\N{PENCIL}", discord.ButtonStyle.secondary),
    Action.REGION: _Look("Vary (Region)", None, discord.ButtonStyle.secondary),
    Action.FIX: _Look("Fix faces", None, discord.ButtonStyle.secondary),
    Action.FIX_HANDS: _Look("Fix hands", None, discord.ButtonStyle.secondary),
    Action.DESCRIBE: _Look("Describe", None, discord.ButtonStyle.secondary),
    Action.MASK: _Look("Show mask", None, discord.ButtonStyle.secondary),
    Action.ZOOM_2: _Look("Zoom Out 2x", "\N{LEFT-POINTING MAGNIFYING GLASS}", _SECONDARY),
    Action.ZOOM_15: _Look("Zoom Out 1.5x", "\N{LEFT-POINTING MAGNIFYING GLASS}", _SECONDARY),
    Action.ZOOM_CUSTOM: _Look("Custom Zoom", "\N{LEFT-POINTING MAGNIFYING GLASS}", _SECONDARY),
    Action.PAN_LEFT: _Look("", "\N{LEFTWARDS BLACK ARROW}", _SECONDARY),
    Action.PAN_RIGHT: _Look("", "\N{BLACK RIGHTWARDS ARROW}", _SECONDARY),
    Action.PAN_UP: _Look("", "\N{UPWARDS BLACK ARROW}", _SECONDARY),
    Action.PAN_DOWN: _Look("", "\N{DOWNWARDS BLACK ARROW}", _SECONDARY),
}
#: How a refusal names an action whose button shows only an arrow.
_NAMES = {
    Action.PAN_LEFT: "Pan left",
    Action.PAN_RIGHT: "Pan right",
    Action.PAN_UP: "Pan up",
    Action.PAN_DOWN: "Pan down",
}


#: The per-image actions' codes in a custom id (longest first: `u` is a prefix of none).
_PER_IMAGE_CODES = "|".join(sorted((str(a) for a in PER_IMAGE), key=len, reverse=True))


class JobButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=(
        rf"imagine:(?P<action>reroll|delete|cancel|mask|(?:{_PER_IMAGE_CODES})(?P<index>[0-9]))"
        r":(?P<job>[0-9]{1,19})(?::(?P<key>[0-9a-f]{1,16}))?"
    ),
):
    """A job's button; only its requester or a moderator may use it (the job service checks).

    A press goes to the surface (`ServiceHost.press`). `label` overrides the action's own
    (U2, V3 on a grid).
    """

    def __init__(
        self,
        action: Action,
        job: JobRef,
        index: int | None = None,
        *,
        label: str | None = None,
        row: int | None = None,
    ) -> None:
        look = _LOOKS[action]
        code = f"{action}{index}" if action in PER_IMAGE else str(action)
        custom_id = f"imagine:{code}:{job.id}" + ("" if job.key is None else f":{job.key}")
        super().__init__(
            discord.ui.Button(
                label=label or look.label or None,
                emoji=None if label else look.emoji,
                style=look.style,
                custom_id=custom_id,
                row=row,
            )
        )
        self.action = action
        self.job = job
        self.index = index

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str]
    ) -> JobButton:
        code, index = match["action"], match["index"]
        action = Action(code[: -len(index)] if index else code)
        job = JobRef(int(match["job"]), match["key"])
        return cls(action, job, int(index) if index else None)

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        await host_of(interaction).press(interaction, Press(self.action, self.job, self.index))


def label_of(action: Action) -> str:
    return _NAMES.get(action) or _LOOKS[action].label


#: One image's rows, as Midjourney lays them out (then Fix hands, where a hand detector is
#: configured, Reroll and Delete: four rows, so a fifth is left); with a GAN upscaler,
#: Upscale (subtle) and (creative) take the Upscale's place. Describe ends the pans' row
#: (every other row may be full: five a row).
_SINGLE_ROWS = (
    (
        Action.UPSCALE,
        Action.UPSCALE_SUBTLE,
        Action.UPSCALE_CREATIVE,
        Action.VARY_SUBTLE,
        Action.VARY_STRONG,
        Action.REGION,
    ),
    (Action.ZOOM_2, Action.ZOOM_15, Action.ZOOM_CUSTOM, Action.EDIT, Action.FIX),
    (Action.PAN_LEFT, Action.PAN_RIGHT, Action.PAN_UP, Action.PAN_DOWN, Action.DESCRIBE),
)
#: A grid's rows of one button per tile after Reroll and Delete (U and V come before them):
#: with at most four tiles, the five rows Discord allows hold them all.
_TILE_ROWS = ((Action.EDIT, "E"), (Action.DESCRIBE, "D"))


def result_view(
    job: JobRef,
    indexes: Sequence[int],
    *,
    kind: JobKind,
    upscalable: bool = True,
    canvas: bool = False,
    region: bool = False,
    gan: bool = False,
    editable: bool = False,
    fix: bool = False,
    hands: bool = False,
    describable: bool = False,
) -> discord.ui.View:
    """The buttons under a result, those `offered` for its kind: for one image Upscale (or
    Upscale (subtle) and (creative)), both Vary and Vary (Region), the zooms, Edit, Fix
    faces, the pans and Describe, Fix hands (`canvas`, `region`, `gan`, `editable`, `fix`,
    `hands`, `describable`: see `offered`); for several U1..Un and V1..Vn (strong
    variations); then Reroll and Delete (and Show mask on a canvas job's); on a grid E1..En
    and D1..Dn last."""
    actions = offered(
        kind,
        upscalable=upscalable,
        canvas=canvas,
        region=region,
        gan=gan,
        editable=editable,
        fix=fix,
        hands=hands,
        describable=describable,
    )
    view = discord.ui.View(timeout=None)

    def add(action: Action, index: int | None = None, **how: Any) -> None:
        if action in actions:
            view.add_item(JobButton(action, job, index, **how))

    last = 2
    if len(indexes) == 1:
        (index,) = indexes
        shown = actions - {Action.UPSCALE} if gan else actions  # at most five a row
        rows = [[a for a in row if a in shown] for row in _SINGLE_ROWS]
        for row, row_actions in enumerate(r for r in rows if r):
            for action in row_actions:
                add(action, index, row=row)
            last = row + 1
        add(Action.FIX_HANDS, index, row=last)
    else:
        for n, index in enumerate(indexes, start=1):
            add(Action.UPSCALE, index, label=f"U{n}", row=0)
        for n, index in enumerate(indexes, start=1):
            add(Action.VARY_STRONG, index, label=f"V{n}", row=1)
    add(Action.REROLL, row=last)
    add(Action.DELETE, row=last)
    add(Action.MASK, row=last)
    if len(indexes) > 1:
        tile_rows = [(action, letter) for action, letter in _TILE_ROWS if action in actions]
        for row, (action, letter) in enumerate(tile_rows, start=last + 1):
            for n, index in enumerate(indexes, start=1):
                add(action, index, label=f"{letter}{n}", row=row)
    return view


def progress_view(job: JobRef) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(JobButton(Action.CANCEL, job))
    return view
