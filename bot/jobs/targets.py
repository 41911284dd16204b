"""Where a job's messages go: through its interaction token, or straight to the channel.

`InteractionTarget` edits the requester's (ephemeral) progress message and posts the result
as a public follow-up, for as long as the 15-minute token is safe to use (on Discord's clock,
see `timing/clock.py`). When it is not, or Discord says it is gone, the job falls back to
`ChannelTarget`: a normal channel message that mentions the requester.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import discord

from ..ledger import JobRecord
from ..services import Services

__all__ = [
    "READY_TIMEOUT",
    "CannotPost",
    "ChannelTarget",
    "InteractionTarget",
    "ResultPost",
    "Target",
    "TokenGone",
    "wait_for_cache",
]

log = logging.getLogger(__name__)

#: Discord's JSON codes meaning the interaction token can no longer be used.
_TOKEN_GONE_CODES = {10015, 10062, 50027}  # unknown webhook/interaction, invalid token
_UNKNOWN_MESSAGE = 10008
#: How long a channel post waits for the gateway cache (permissions, NSFW flags) at start-up.
READY_TIMEOUT = 30.0


class TokenGone(Exception):
    """The interaction token expired or was revoked: use the channel instead."""


class CannotPost(Exception):
    """The bot may not post the result in the job's channel (deleted, no permission)."""


@dataclass(frozen=True, slots=True)
class ResultPost:
    """A job's result message, to post wherever its target says."""

    content: str
    embed: discord.Embed
    files: Callable[[], list[discord.File]]  # fresh files per attempt: a File is sent once
    view: discord.ui.View
    mention: int  # the requester: the only user the message may ping


class Target(Protocol):
    channel_id: int
    message_id: int | None  # the progress message the job's Cancel button is on, if any

    @property
    def interactive(self) -> bool:
        """Whether progress messages can be shown (False: only the result is posted)."""
        ...

    async def progress(
        self, content: str, *, preview: bytes | None, view: discord.ui.View | None, must: bool
    ) -> bool: ...

    async def post(self, result: ResultPost) -> discord.Message: ...


def _mentions(user_id: int) -> discord.AllowedMentions:
    return discord.AllowedMentions(
        everyone=False, roles=False, users=[discord.Object(user_id)], replied_user=False
    )


async def wait_for_cache(services: Services) -> None:
    """Wait (a bounded time) for the gateway's channel cache: a job resumed at start-up can
    finish before it is filled, and permissions and NSFW flags come from it."""
    channels = services.channels
    if not channels.is_ready():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(channels.wait_until_ready(), READY_TIMEOUT)


class InteractionTarget:
    """Answers through the token of the interaction that asked for the job."""

    def __init__(
        self,
        services: Services,
        *,
        application_id: int,
        token: str,
        interaction_id: int,
        channel_id: int,
        message_id: int | None,
    ) -> None:
        self.services = services
        self.channel_id = channel_id
        self.interaction_id = interaction_id
        self.message_id = message_id  # the progress message (None: not known after a restart)
        self._webhook = services.channels.partial_webhook(application_id, token)
        self._gone = False

    @classmethod
    def for_job(
        cls, services: Services, job: JobRecord, *, message_id: int | None
    ) -> InteractionTarget:
        """Answers job `job` through the token stored with it."""
        asked = job.request
        assert asked.interaction_token is not None
        return cls(
            services,
            application_id=asked.application_id,
            token=asked.interaction_token,
            interaction_id=asked.interaction_id,
            channel_id=asked.channel_id,
            message_id=message_id,
        )

    @property
    def usable(self) -> bool:
        return not self._gone and self.services.clock.token_usable(self.interaction_id)

    @property
    def interactive(self) -> bool:
        return self.usable and self.message_id is not None

    def _check(self, exc: discord.HTTPException) -> None:
        if exc.code in _TOKEN_GONE_CODES or exc.status == 401:
            self._gone = True
            raise TokenGone(str(exc)) from exc

    async def progress(
        self, content: str, *, preview: bytes | None, view: discord.ui.View | None, must: bool
    ) -> bool:
        """Edit the progress message; optional edits are skipped when the channel is busy."""
        if not self.interactive:
            return False
        assert self.message_id is not None
        throttle = self.services.edit_throttle
        if must:
            await throttle.acquire(self.channel_id)
        elif not throttle.try_acquire(self.channel_id):
            return False
        attachments = [discord.File(io.BytesIO(preview), "preview.png")] if preview else []
        try:
            message = await self._webhook.edit_message(
                self.message_id, content=content, attachments=attachments, view=view
            )
        except discord.NotFound as exc:
            if exc.code == _UNKNOWN_MESSAGE:  # the user dismissed it: stop editing
                self.message_id = None
                return False
            self._check(exc)
            raise
        except discord.HTTPException as exc:
            self._check(exc)
            raise
        self.services.clock.observe(message.edited_at)
        return True

    async def post(self, result: ResultPost) -> discord.Message:
        if not self.usable:
            raise TokenGone("the interaction token is too old")
        try:
            message = await self._webhook.send(
                result.content,
                embed=result.embed,
                files=result.files(),
                view=result.view,
                allowed_mentions=_mentions(result.mention),
                wait=True,
            )
        except discord.HTTPException as exc:
            self._check(exc)
            raise
        self.services.clock.observe(message.created_at)
        return message


class ChannelTarget:
    """Posts the result as a normal channel message; shows no progress."""

    interactive = False
    message_id = None  # no progress message

    def __init__(self, services: Services, *, channel_id: int, guild_id: int) -> None:
        self.services = services
        self.channel_id = channel_id
        self.guild_id = guild_id

    async def progress(
        self, content: str, *, preview: bytes | None, view: discord.ui.View | None, must: bool
    ) -> bool:
        return False

    async def _check_permissions(self, *, with_files: bool) -> None:
        """Refuse early rather than earn a 403: Discord counts those against the bot."""
        await wait_for_cache(self.services)
        channel = self.services.channels.get_channel(self.channel_id)
        if isinstance(channel, discord.abc.GuildChannel):
            perms = channel.permissions_for(channel.guild.me)
            if not perms.send_messages or (
                with_files and not (perms.attach_files and perms.embed_links)
            ):
                raise CannotPost(f"missing permissions in channel {self.channel_id}")

    def _channel(self) -> discord.PartialMessageable:
        channels = self.services.channels
        return channels.get_partial_messageable(self.channel_id, guild_id=self.guild_id or None)

    async def say(self, text: str, *, mention: int) -> None:
        """A short note to the requester (a job that ended without images)."""
        await self._check_permissions(with_files=False)
        try:
            await self._channel().send(f"<@{mention}> {text}", allowed_mentions=_mentions(mention))
        except (discord.Forbidden, discord.NotFound) as exc:
            raise CannotPost(str(exc)) from exc

    async def post(self, result: ResultPost) -> discord.Message:
        await self._check_permissions(with_files=True)
        try:
            message = await self._channel().send(
                result.content,
                embed=result.embed,
                files=result.files(),
                view=result.view,
                allowed_mentions=_mentions(result.mention),
            )
        except (discord.Forbidden, discord.NotFound) as exc:
            raise CannotPost(str(exc)) from exc
        self.services.clock.observe(message.created_at)
        return message
