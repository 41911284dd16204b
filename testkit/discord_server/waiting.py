"""Awaiting server state changes without sleeping.

Every state change (request recorded, message created or edited, interaction answered, clock
advanced, gateway event sent) calls :meth:`Changes.notify`; waiters re-check their predicate on
each change and fail with an :class:`AssertionError` that says what they waited for and what the
server saw, so a failing end-to-end test explains itself.

Predicates may also read state the server cannot see change (the bot's own objects, e.g. "the
command handler recorded an error"), so waiters re-check at least every ``poll_interval`` too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class Changes:
    """Broadcasts "something changed" to any number of waiters (an Event swapped per change)."""

    def __init__(self, poll_interval: float = 0.02) -> None:
        self._event = asyncio.Event()
        self.changes = 0
        self.poll_interval = poll_interval

    def notify(self) -> None:
        """Wake every waiter; callable from sync code (handlers, done-callbacks, tests)."""
        self.changes += 1
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def wait_for(
        self,
        predicate: Callable[[], T | None],
        *,
        timeout: float,  # noqa: ASYNC109
        what: str,
        seen: Callable[[], str],
        abort: Callable[[], str | None] | None = None,
    ) -> T:
        """Return the first truthy ``predicate()`` result, re-evaluated after every change.

        ``abort`` returns a reason to stop early (e.g. the bot task died); ``seen`` describes the
        state for the timeout message.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            result = predicate()
            if result:
                return result
            reason = abort() if abort is not None else None
            if reason:
                raise AssertionError(f"Gave up waiting for {what}: {reason}\nSeen:\n{seen()}")
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(
                    f"Timed out after {timeout:g}s waiting for {what}.\nSeen:\n{seen()}"
                )
            event = self._event
            try:
                await asyncio.wait_for(event.wait(), min(remaining, self.poll_interval))
            except TimeoutError:
                pass


__all__ = ["Changes"]
