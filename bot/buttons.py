"""Buttons that keep working after a restart: Reroll, Delete (on results), Cancel (on progress).

Each `custom_id` is `imagine:<action>:<job id>:<job key>` (a `JobRef`; buttons posted before
keys existed have no key); the job is looked up when the button is pressed, so no view object
has to survive in memory (discord.py's `DynamicItem`). One item
class serves every action through a table, so a new button is one row. discord.py only logs
errors raised in item callbacks; these route them to `tree.report`, the one place that
answers users about errors.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any

import discord

from .services import JobActions, JobRef, host_of
from .tree import rate_limited, report

__all__ = ["Action", "JobButton", "progress_view", "result_view"]


class Action(enum.StrEnum):
    REROLL = "reroll"
    DELETE = "delete"
    CANCEL = "cancel"


@dataclass(frozen=True, slots=True)
class _Look:
    label: str
    emoji: str | None
    style: discord.ButtonStyle


_LOOKS: dict[Action, _Look] = {
    Action.REROLL: _Look("Reroll", "\N{GAME DIE}", discord.ButtonStyle.secondary),
    Action.DELETE: _Look("Delete", "\N{WASTEBASKET}", discord.ButtonStyle.danger),
    Action.CANCEL: _Look("Cancel", None, discord.ButtonStyle.secondary),
}


async def _act(
    actions: JobActions, action: Action, i: discord.Interaction[Any], job: JobRef
) -> None:
    if action is Action.REROLL:
        await actions.reroll(i, job)
    elif action is Action.DELETE:
        await actions.delete(i, job)
    else:
        await actions.cancel(i, job)


class JobButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"imagine:(?P<action>reroll|delete|cancel):(?P<job>[0-9]{1,19})(?::(?P<key>[0-9a-f]{1,16}))?",
):
    """A job's button; only its requester or a moderator may use it (the job service checks).

    Every press counts against the presser's rate limit before any other work.
    """

    def __init__(self, action: Action, job: JobRef) -> None:
        look = _LOOKS[action]
        custom_id = f"imagine:{action}:{job.id}" + ("" if job.key is None else f":{job.key}")
        super().__init__(
            discord.ui.Button(
                label=look.label,
                emoji=look.emoji,
                style=look.style,
                custom_id=custom_id,
            )
        )
        self.action = action
        self.job = job

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str]
    ) -> JobButton:
        return cls(Action(match["action"]), JobRef(int(match["job"]), match["key"]))

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        limited = rate_limited(interaction)
        if limited is not None:
            await report(interaction, limited)
            return
        try:
            await _act(host_of(interaction).job_actions, self.action, interaction, self.job)
        except Exception as exc:
            await report(interaction, exc)


def _view(job: JobRef, *actions: Action) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for action in actions:
        view.add_item(JobButton(action, job))
    return view


def result_view(job: JobRef) -> discord.ui.View:
    return _view(job, Action.REROLL, Action.DELETE)


def progress_view(job: JobRef) -> discord.ui.View:
    return _view(job, Action.CANCEL)
