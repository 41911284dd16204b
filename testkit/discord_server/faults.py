"""Fault injection, the third part of the test API: REST failures and actions queued for coming
requests, a clock that jumps, and a gateway that drops, asks to reconnect or sends raw events."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .clock import ServerClock
from .gateway import CLOSE_UNKNOWN_ERROR, INVALID_SESSION, RECONNECT, Gateway
from .recording import AnswerHook, AnswerTest, FailureInjection, FailureSpec, InjectionQueue
from .state import Guild
from .waiting import Changes
from .world_setup import id_of


class Faults:
    """Part of :class:`~testkit.discord_server.server.DiscordTestServer`."""

    clock: ServerClock
    gateway: Gateway
    injection_queue: InjectionQueue
    changes: Changes

    # -- REST and the clock --------------------------------------------------------------------

    def advance_time(self, seconds: float) -> None:
        """Move the server clock forward (deadlines, token expiry, rate-limit windows)."""
        self.clock.advance(seconds)
        self.changes.notify()

    def inject_failures(
        self, method: str, path_regex: str, failures: Iterable[FailureSpec]
    ) -> FailureInjection:
        """Answer the next requests matching ``method`` (or ``*``) and ``path_regex``
        (``re.search`` on the path after ``/api/v10``) with ``failures`` in order, then recover.

        Each failure is ``(status, retry_after)``, a bare status, or a :class:`Failure`.
        429s carry ``retry_after`` JSON, ``Retry-After``/``X-RateLimit-*`` and ``Via`` headers
        (discord.py only retries 429s that have ``Via``).
        """
        return self.injection_queue.inject(method, path_regex, failures)

    def before_answering(
        self,
        method: str,
        path_regex: str,
        action: AnswerHook,
        *,
        when: AnswerTest = lambda _request: True,
    ) -> None:
        """Run ``action`` once, when the next request matching ``method``, ``path_regex`` and
        ``when`` has been handled but before the client gets the answer: e.g. lock the bot's
        database in the window between a post and the bot recording it."""
        self.injection_queue.before_answering(method, path_regex, action, when)

    # -- gateway -------------------------------------------------------------------------------

    async def dispatch(
        self, event: str, data: Any, *, guild: Guild | int | None = None, intent: int | None = None
    ) -> int | None:
        """Send a raw gateway dispatch to the shard of ``guild``; returns its seq."""
        return self.gateway.dispatch(event, data, guild_id=id_of(guild), intent=intent)

    async def drop_gateway(
        self, code: int = CLOSE_UNKNOWN_ERROR, *, shard_id: int | None = None, abrupt: bool = False
    ) -> int:
        """Close the bot's gateway socket (resumable ``code``, or TCP abort with ``abrupt``)."""
        return await self.gateway.drop(code=code, shard_id=shard_id, abrupt=abrupt)

    async def send_reconnect(self, *, shard_id: int | None = None) -> None:
        """Op 7: ask the client to reconnect and resume."""
        await self.gateway.send_op(RECONNECT, None, shard_id=shard_id)

    async def invalidate_session(
        self, *, resumable: bool = False, shard_id: int | None = None
    ) -> None:
        """Op 9: the client must IDENTIFY again (or resume when ``resumable``)."""
        await self.gateway.send_op(INVALID_SESSION, resumable, shard_id=shard_id)


__all__ = ["Faults"]
