"""A press of a job button, answered: rate-limited, handed to the job actions, errors reported.

discord.py calls the pressed `JobButton` (`presentation/buttons.py`), which hands the press
here through `ServiceHost.press`; discord.py would only log what an item callback raises, so
every error goes to `tree.report`, the one place that answers users about errors. Slash
commands get the same from `ImagineTree`.
"""

from __future__ import annotations

from typing import Any

import discord

from ..services import PER_IMAGE, Action, JobActions, Press
from .tree import rate_limited, report

__all__ = ["act", "answer"]


async def answer(actions: JobActions, interaction: discord.Interaction[Any], press: Press) -> None:
    """Every press counts against the presser's rate limit before any other work."""
    limited = rate_limited(interaction)
    if limited is not None:
        await report(interaction, limited)
        return
    try:
        await act(actions, interaction, press)
    except Exception as exc:
        await report(interaction, exc)


async def act(actions: JobActions, i: discord.Interaction[Any], press: Press) -> None:
    """The job action a press names."""
    action, job, index = press.action, press.job, press.index
    if action in PER_IMAGE:
        assert index is not None
        if action is Action.EDIT and press.text is None:  # the button: ask what to change
            await actions.ask_edit(i, job, index)
        elif action is Action.EDIT:  # the modal it opened, submitted
            await actions.edit(i, job, index, press.text or "")
        elif action is Action.UPSCALE:
            await actions.upscale(i, job, index)
        else:
            await actions.vary(i, job, index, strong=action is Action.VARY_STRONG)
    elif action is Action.REROLL:
        await actions.reroll(i, job)
    elif action is Action.DELETE:
        await actions.delete(i, job)
    else:
        await actions.cancel(i, job)
