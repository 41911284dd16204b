"""What the REST routes and the gateway tell the rest of the server, as one small protocol.

The handlers work on the world (:mod:`.state`) and report through a :class:`Notifier`: that
something changed (waiters re-check), that a rule was broken, that a message needs its gateway
event. :class:`~testkit.discord_server.server.DiscordTestServer` implements it and wires the
handlers; no handler imports the server.
"""

from __future__ import annotations

from typing import Protocol

from .interactions import Interaction
from .recording import RecordedRequest
from .state import Message


class Notifier(Protocol):
    """The three things a handler has to say."""

    def notify(self) -> None:
        """Something changed: wake the waiters."""

    def violate(
        self,
        kind: str,
        message: str,
        *,
        request: RecordedRequest | None = None,
        interaction: Interaction | None = None,
    ) -> None:
        """Record a broken rule (or an unimplemented route) for ``assert_clean``."""

    def message_event(self, event: str, message: Message) -> None:
        """Send MESSAGE_CREATE/UPDATE/DELETE for ``message`` to the bot, as its intents allow."""


__all__ = ["Notifier"]
