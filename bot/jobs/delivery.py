"""Delivering a result exactly once, whatever fails: the ledger, Discord, or the process.

    record "delivery started" → post (retried through Discord outages; after any failed
    attempt, look for the post before posting again) → record "done" (retried until it
    succeeds or the process stops)

A crash anywhere in that sequence leaves the job active with its delivery start recorded;
the next start then *reconciles* before it posts again: it reads the channel's messages from
the delivery's start to the last moment a post could have been made (`POST_WINDOW` later),
every page of them however busy the channel is, and, if the bot's message with the job's
images is there (their file names carry the job id: `imagine-<job>-<seed>.png`), records it
instead of posting twice. Only messages in that window written by the bot itself count, so
an older message of a reset database, or a file a member uploads, never matches.

The history is the record because Discord keeps no other: a message's `nonce` with
`enforce_nonce` makes a repeated create idempotent only for a few minutes, and interaction
followups (webhooks) take no nonce at all, so it cannot span a restart.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import TypeVar

import aiohttp
import discord

from ..ledger import JobRecord, JobRef
from ..services import Services

__all__ = [
    "DELIVERY_PATIENCE",
    "GRID",
    "RETRY_FIRST",
    "RETRY_MAX",
    "find_posted",
    "is_transient",
    "persist",
    "result_filename",
    "result_images",
    "result_job",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: How long a finished job keeps trying to post through a Discord outage before giving up.
DELIVERY_PATIENCE = 15 * 60.0
#: First and longest wait between attempts (posting, or writing to the ledger).
RETRY_FIRST = 1.0
RETRY_MAX = 30.0
#: How far before the delivery start a post is looked for (the host's clock against
#: Discord's).
HISTORY_MARGIN = timedelta(minutes=2)
#: How long after the delivery start a post can appear: the last attempt starts within
#: `DELIVERY_PATIENCE`, and discord.py retries one request for a few minutes more.
POST_WINDOW = timedelta(seconds=DELIVERY_PATIENCE) + timedelta(minutes=10)

_RESULT_FILE = re.compile(
    r"^(?:SPOILER_)?imagine-(?P<job>\d+)(?:-(?P<key>[0-9a-f]+))?-(?P<what>\d+|grid)\.png$"
)
#: The name's last part for a 2×2 grid (four images in one file).
GRID = "grid"


def result_filename(job: JobRef, seed: int | str) -> str:
    """The attachment name of one result image (`seed`), or of a grid (`GRID`): it names the
    job (id and key), so a restart can find a result it posted, and never mistakes another
    database's job for it."""
    key = "" if job.key is None else f"-{job.key}"
    return f"imagine-{job.id}{key}-{seed}.png"


def result_images(filename: str) -> int:
    """Images an attachment of a result holds (4 for a grid)."""
    found = _RESULT_FILE.match(filename)
    return 0 if found is None else 4 if found["what"] == GRID else 1


def result_job(filename: str) -> JobRef | None:
    """The job a result attachment belongs to (spoiler names included), else None."""
    found = _RESULT_FILE.match(filename)
    return JobRef(int(found["job"]), found["key"]) if found else None


def is_transient(exc: BaseException) -> bool:
    """An error that may pass if tried again later: Discord's 5xx, the network, a timeout."""
    transient = discord.DiscordServerError | aiohttp.ClientError | OSError | TimeoutError
    return isinstance(exc, transient)


async def find_posted(
    services: Services, job: JobRecord, since: datetime
) -> discord.Message | None:
    """The bot's message with `job`'s images, if its delivery (started at `since`) posted
    one. Every message from `since` (less a margin) to `POST_WINDOW` later is read, oldest
    first, 100 a request: the post is found after any number of other messages, and a
    channel's later history is never read."""
    channels = services.channels
    me = channels.user
    if me is None:
        return None
    asked = job.request
    channel = channels.get_partial_messageable(asked.channel_id, guild_id=asked.guild_id or None)
    after = discord.Object(discord.utils.time_snowflake(since - HISTORY_MARGIN))
    before = discord.Object(discord.utils.time_snowflake(since + POST_WINDOW))
    async for message in channel.history(limit=None, after=after, before=before):
        if message.author.id != me.id:
            continue
        if any(result_job(a.filename) == JobRef.of(job) for a in message.attachments):
            return message
    return None


async def persist(what: str, job_id: int, write: Callable[[], Awaitable[T]]) -> T:
    """Run a ledger write until it succeeds (a full disk, a lost connection): the result is
    already out, so giving up would lose the record of it. Stops only with the process."""
    delay = RETRY_FIRST
    while True:
        try:
            return await write()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error(
                "job %d: could not record %s (%s); trying again in %.0f s",
                job_id,
                what,
                exc,
                delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)
