"""A press of a job button, answered: rate-limited, handed to the job actions, errors reported.

discord.py calls the pressed `JobButton` (`presentation/buttons.py`), which hands the press
here through `ServiceHost.press`; discord.py would only log what an item callback raises, so
every error goes to `tree.report`, the one place that answers users about errors. Slash
commands get the same from `ImagineTree`.
"""

from __future__ import annotations

import io
from typing import Any

import discord

from ..ledger import JobRef
from ..presentation.modals import INSTRUCTION, ask
from ..services import ASKS, CANVAS, PER_IMAGE, UPSCALES, Action, JobActions, Press
from .cogs.describe import describe_result
from .tree import rate_limited, report

__all__ = ["act", "answer", "show_mask"]


async def answer(actions: JobActions, interaction: discord.Interaction[Any], press: Press) -> None:
    """Every press counts against the presser's rate limit before any other work (a modal's
    answers come back as a second interaction of the same press: counted once)."""
    limited = rate_limited(interaction) if press.answers is None else None
    if limited is not None:
        await report(interaction, limited)
        return
    try:
        await act(actions, interaction, press)
    except Exception as exc:
        await report(interaction, exc)


async def show_mask(actions: JobActions, i: discord.Interaction[Any], job: JobRef) -> None:
    """Show mask: the mask a canvas job inpainted with, to the presser alone (free)."""
    await i.response.defer(ephemeral=True, thinking=True)
    png = await actions.mask(i, job)
    await i.followup.send(
        f"The mask job #{job.id} used: white was made anew, black kept.",
        file=discord.File(io.BytesIO(png), filename=f"mask-{job.id}.png"),
        ephemeral=True,
    )


async def act(actions: JobActions, i: discord.Interaction[Any], press: Press) -> None:
    """The job action a press names."""
    action, job, index = press.action, press.job, press.index
    if action is Action.EDIT:  # checked before its modal opens: the job service asks
        assert index is not None
        if press.answers is None:
            await actions.ask_edit(i, job, index)
        else:
            await actions.edit(i, job, index, press.answers.get(INSTRUCTION, ""))
    elif action is Action.DESCRIBE:  # no job: the surface answers with prompts
        assert index is not None
        await describe_result(actions, i, job, index)
    elif action is Action.MASK:  # no job: the kept mask, privately
        await show_mask(actions, i, job)
    elif action in ASKS and press.answers is None:
        await i.response.send_modal(ask(press))  # its answers come back as a press
    elif action in CANVAS:
        assert index is not None
        await actions.canvas(i, job, index, action, press.answers or {})
    elif action in PER_IMAGE:
        assert index is not None
        if action in UPSCALES:
            await actions.upscale(i, job, index, action)
        else:
            await actions.vary(i, job, index, strong=action is Action.VARY_STRONG)
    elif action is Action.REROLL:
        await actions.reroll(i, job)
    elif action is Action.DELETE:
        await actions.delete(i, job)
    else:
        await actions.cancel(i, job)
