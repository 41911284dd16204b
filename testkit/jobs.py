"""A job's outcome, read back: its id from the buttons, its result message, its ledger row."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from bot.ledger import JobRecord, JobRequest, Ledger, QuotaPolicy, open_ledger

from .config import database_url
from .discord_server import Interaction, Message

#: Seconds a test waits for a job to be delivered (the tiny model on 2 busy CPU cores).
JOB_TIMEOUT = 90.0

#: The custom id of a job's buttons: `imagine:<action>:<job id>:<job key>`.
JOB_ID = re.compile(r"imagine:(?P<action>[a-z0-9_]+):(?P<job>\d+)(?::(?P<key>[0-9a-f]+))?")


#: The guild and user of `job_request`'s default request.
GUILD = 1_100_000_000_000_000_001
USER = 2_200_000_000_000_000_001


def job_request(**changes: Any) -> JobRequest:
    """A ledger request as `/imagine` stores it (snowflakes full-size), with `changes`."""
    base = JobRequest(
        guild_id=GUILD,
        channel_id=4_400_000_000_000_000_001,
        user_id=USER,
        application_id=5_500_000_000_000_000_001,
        interaction_id=6_600_000_000_000_000_001,
        interaction_token="token-" + "x" * 200,
        prompt="a lighthouse at dusk, oil painting",
        negative_prompt="blurry",
        seed=2**63 - 1,
        model="builtin:tiny",
        scheduler="euler_a",
        steps=20,
        guidance=7.5,
        width=512,
        height=768,
        image_count=1,
    )
    return replace(base, **changes)


def job_id_of(message: Message) -> int:
    """The job id in a message's buttons (`imagine:<action>:<id>:<key>`)."""
    for custom_id in message.custom_ids:
        found = JOB_ID.fullmatch(custom_id)
        if found:
            return int(found["job"])
    raise AssertionError(f"no job button on {message!r}")


def button_id(message: Message, action: str) -> str:
    """The custom id of `message`'s button for `action` (e.g. "reroll")."""
    for custom_id in message.custom_ids:
        found = JOB_ID.fullmatch(custom_id)
        if found and found["action"] == action:
            return custom_id
    raise AssertionError(f"no {action} button on {message!r}: {message.custom_ids}")


def result_of(interaction: Interaction) -> Message | None:
    """The public result message of an /imagine (a followup with images)."""
    return next(
        (m for m in interaction.followups if m.attachments and not m.ephemeral and not m.deleted),
        None,
    )


async def wait_result(interaction: Interaction, within: float = JOB_TIMEOUT) -> Message:
    return await interaction.wait_for(
        result_of, timeout=within, what="the images to be posted as a followup"
    )


@contextlib.asynccontextmanager
async def read_ledger(tmp: Path) -> AsyncIterator[Ledger]:
    """The bot's database, opened by the test as a second reader (the real ledger code)."""
    async with open_ledger(database_url(tmp), QuotaPolicy(), migrate=False) as ledger:
        yield ledger


async def job_of(ledger: Ledger, job_id: int) -> JobRecord:
    job = await ledger.get_job(job_id)
    assert job is not None, f"job {job_id} is not in the database"
    return job


__all__ = [
    "JOB_ID",
    "JOB_TIMEOUT",
    "button_id",
    "job_id_of",
    "job_of",
    "read_ledger",
    "result_of",
    "wait_result",
]
