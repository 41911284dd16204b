"""The modals of the job buttons that first ask for words: Edit (what to change), Custom Zoom
(a factor) and Vary (Region) (which part of the picture, and what should be there instead).

Discord has no brush, so a region is named in words; a modal's answers come back as a new
interaction, which is handed to the surface like the button's press (`ServiceHost.press`,
with `Press.answers`), so rate limits, checks and error messages are the buttons' own. Edit's
modal opens only after the press is checked (the job service opens it). A modal is answered by
the process that opened it (discord.py keeps it in memory): one opened before a restart fails
in Discord's own words, and costs nothing.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import discord

from ..ledger import JobRef
from ..services import Action, Press, host_of

__all__ = ["FACTOR", "INSTRUCTION", "MAX_INSTRUCTION", "WHAT", "WHERE", "EditModal", "ask"]

#: The answers' keys (and the text inputs' custom ids).
FACTOR = "factor"
WHERE = "where"
WHAT = "what"
INSTRUCTION = "instruction"
#: Characters an instruction may have (Discord's limit on a text input is 4000).
MAX_INSTRUCTION = 1000


class EditModal(discord.ui.Modal):
    """Asks what to change in image `index` of `job`; the submit makes the edit."""

    instruction: discord.ui.TextInput[EditModal] = discord.ui.TextInput(
        label="What to change",
        placeholder="make it night; remove the hat; change the sign to say OPEN",
        style=discord.TextStyle.paragraph,
        min_length=1,
        max_length=MAX_INSTRUCTION,
        custom_id=INSTRUCTION,
    )

    def __init__(self, job: JobRef, index: int) -> None:
        key = "" if job.key is None else f":{job.key}"
        super().__init__(
            title=f"Edit image {index + 1}", custom_id=f"imagine:edit:{index}:{job.id}{key}"
        )
        self.job = job
        self.index = index

    async def on_submit(self, interaction: discord.Interaction[Any]) -> None:
        answers = {INSTRUCTION: self.instruction.value.strip()}
        press = Press(Action.EDIT, self.job, self.index, answers=answers)
        await host_of(interaction).press(interaction, press)


class _Asking(discord.ui.Modal):
    """A modal for one press; its submission is the press again, with the answers."""

    def __init__(self, press: Press, title: str, inputs: list[discord.ui.TextInput[Any]]) -> None:
        code = f"{press.action}{press.index}:{press.job.id}"
        super().__init__(title=title, timeout=None, custom_id=f"imagine-ask:{code}")
        self.press = press
        self.inputs = inputs
        for text_input in inputs:
            self.add_item(text_input)

    async def on_submit(self, interaction: discord.Interaction[Any]) -> None:
        answers = {str(i.custom_id): i.value for i in self.inputs}
        await host_of(interaction).press(interaction, replace(self.press, answers=answers))


def ask(press: Press) -> discord.ui.Modal:
    """The modal that asks for what `press`'s action needs (an `ASKS` action)."""
    if press.action is Action.ZOOM_CUSTOM:
        factor = discord.ui.TextInput[Any](
            label="Zoom out by (1.1 to 4)",
            custom_id=FACTOR,
            placeholder="1.8",
            max_length=8,
        )
        return _Asking(press, "Custom Zoom", [factor])
    where = discord.ui.TextInput[Any](
        label="Which part of the picture",
        custom_id=WHERE,
        placeholder="the hat",
        max_length=100,
    )
    what = discord.ui.TextInput[Any](
        label="What should be there instead",
        custom_id=WHAT,
        placeholder="a red cap (empty: the picture's own prompt)",
        required=False,
        max_length=1000,
        style=discord.TextStyle.paragraph,
    )
    return _Asking(press, "Vary (Region)", [where, what])
