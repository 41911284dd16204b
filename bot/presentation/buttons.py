"""Buttons that keep working after a restart: Upscale, Vary, Edit, Reroll and Delete on
results (U1-U4, V1-V4 and E1-E4 on a grid), Cancel on progress.

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
from ..services import PER_IMAGE, Action, Press, host_of

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
        Action.UPSCALE,
        Action.VARY_SUBTLE,
        Action.VARY_STRONG,
        Action.REROLL,
        Action.DELETE,
        Action.EDIT,
    }
)
#: What a result of each kind offers. An upscale offers no Upscale (it is as large as it
#: gets) and no Reroll (another upscale would be recorded, and charged, as an image).
OFFERED: Mapping[JobKind, frozenset[Action]] = {
    JobKind.IMAGINE: _MADE,
    JobKind.VARIATION: _MADE,
    JobKind.EDIT: _MADE,
    JobKind.ZOOM: _MADE,
    JobKind.PAN: _MADE,
    JobKind.REGION: _MADE,
    JobKind.FIX: _MADE,
    JobKind.UPSCALE: frozenset(
        {Action.VARY_SUBTLE, Action.VARY_STRONG, Action.DELETE, Action.EDIT}
    ),
}


def offered(kind: JobKind, *, upscalable: bool = True, editable: bool = True) -> frozenset[Action]:
    """The actions on a result of `kind` (`upscalable`: its images can get any larger;
    `editable`: a configured model edits pictures by instruction)."""
    actions = OFFERED[kind]
    if not upscalable:
        actions -= {Action.UPSCALE}
    return actions if editable else actions - {Action.EDIT}


@dataclass(frozen=True, slots=True)
class _Look:
    label: str
    emoji: str | None
    style: discord.ButtonStyle


_LOOKS: dict[Action, _Look] = {
    Action.REROLL: _Look("Reroll", "\N{GAME DIE}", discord.ButtonStyle.secondary),
    Action.DELETE: _Look("Delete", "\N{WASTEBASKET}", discord.ButtonStyle.danger),
    Action.CANCEL: _Look("Cancel", None, discord.ButtonStyle.secondary),
    Action.UPSCALE: _Look("Upscale", None, discord.ButtonStyle.primary),
    Action.VARY_SUBTLE: _Look("Vary (subtle)", None, discord.ButtonStyle.secondary),
    Action.VARY_STRONG: _Look("Vary (strong)", None, discord.ButtonStyle.secondary),
    Action.EDIT: _Look("Edit", "\N{PENCIL}", discord.ButtonStyle.secondary),
}


class JobButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=(
        r"imagine:(?P<action>reroll|delete|cancel|(?:u|vs|vx|e)(?P<index>[0-9]))"
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
                label=label or look.label,
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
    return _LOOKS[action].label


def result_view(
    job: JobRef,
    indexes: Sequence[int],
    *,
    kind: JobKind,
    upscalable: bool = True,
    editable: bool = False,
) -> discord.ui.View:
    """The buttons under a result, those `offered` for its kind: for one image Upscale and
    both Vary, for several U1..Un and V1..Vn (strong variations); then Reroll and Delete;
    then Edit (E1..En on a grid) where a model edits by instruction."""
    actions = offered(kind, upscalable=upscalable, editable=editable)
    view = discord.ui.View(timeout=None)

    def add(action: Action, index: int | None = None, **how: Any) -> None:
        if action in actions:
            view.add_item(JobButton(action, job, index, **how))

    if len(indexes) == 1:
        (index,) = indexes
        for action in (Action.UPSCALE, Action.VARY_SUBTLE, Action.VARY_STRONG):
            add(action, index, row=0)
    else:
        for n, index in enumerate(indexes, start=1):
            add(Action.UPSCALE, index, label=f"U{n}", row=0)
        for n, index in enumerate(indexes, start=1):
            add(Action.VARY_STRONG, index, label=f"V{n}", row=1)
    add(Action.REROLL, row=2)
    add(Action.DELETE, row=2)
    if len(indexes) == 1:
        add(Action.EDIT, indexes[0], row=2)
    else:
        for n, index in enumerate(indexes, start=1):
            add(Action.EDIT, index, label=f"E{n}", row=3)
    return view


def progress_view(job: JobRef) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(JobButton(Action.CANCEL, job))
    return view
