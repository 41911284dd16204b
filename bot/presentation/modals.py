"""The modal an Edit button opens: one text field, "What to change".

Its custom id names the job and image like the button's (`imagine:edit:<index>:<job>:<key>`),
but the modal object itself answers the submit (discord.py keeps it in memory while it is
open): the press arrives as a `Press` with the typed `text`, handled like any button press
(`ServiceHost.press`), so the same checks, rate limit and error reporting apply.
"""

from __future__ import annotations

from typing import Any

import discord

from ..ledger import JobRef
from ..services import Action, Press, host_of

__all__ = ["MAX_INSTRUCTION", "EditModal"]

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
        custom_id="instruction",
    )

    def __init__(self, job: JobRef, index: int) -> None:
        key = "" if job.key is None else f":{job.key}"
        super().__init__(
            title=f"Edit image {index + 1}", custom_id=f"imagine:edit:{index}:{job.id}{key}"
        )
        self.job = job
        self.index = index

    async def on_submit(self, interaction: discord.Interaction[Any]) -> None:
        press = Press(Action.EDIT, self.job, self.index, text=self.instruction.value.strip())
        await host_of(interaction).press(interaction, press)
