"""Discord's rules that the server enforces, and the record of each time the bot broke one.

All rules are on by default so tests see what production would; a test turns one off by
mutating ``server.rules`` (``server.rules.response_deadline = None``) or by passing
``Rules(...)``/``Rules.lenient()`` to the server.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .recording import RecordedRequest

MIB = 1024 * 1024


class ViolationKind(StrEnum):
    """Names of the rules; ``assert_clean(expected=...)`` accepts these or their string values."""

    UNIMPLEMENTED = "unimplemented"  # a route or gateway opcode the server does not know
    LATE_RESPONSE = "late_response"  # first interaction response after the deadline (10062)
    NO_RESPONSE = "no_response"  # an interaction never got any initial response
    ALREADY_ACKNOWLEDGED = "already_acknowledged"  # a second initial response (40060)
    INVALID_CALLBACK = "invalid_callback"  # callback type not allowed for this interaction
    FOLLOWUP_BEFORE_ACK = "followup_before_ack"  # webhook route used before the initial response
    TOKEN_EXPIRED = "token_expired"  # interaction webhook used after 15 min (50027)
    ATTACHMENT_TOO_LARGE = "attachment_too_large"  # a file over the size limit (40005)
    TOO_MANY_FILES = "too_many_files"  # more than 10 files on one message
    INVALID_PAYLOAD = "invalid_payload"  # message/command body Discord would refuse (50035/50006)
    MISSING_PERMISSIONS = "missing_permissions"  # posting where the bot may not (50013)
    RATE_LIMITED = "rate_limited"  # only when Rules.rate_limit_is_violation is set
    UNUSED_INJECTION = "unused_injection"  # inject_failures() entries never consumed
    BOT_CRASHED = "bot_crashed"  # the watched bot task ended with an exception
    SERVER_BUG = "server_bug"  # this test server raised while handling a request


@dataclass(frozen=True)
class RateLimit:
    """At most ``count`` requests per ``per`` seconds (sliding window on the server clock)."""

    count: int
    per: float


@dataclass
class Rules:
    """Which Discord rules are enforced; ``None``/``False`` turns a rule off."""

    response_deadline: float | None = 3.0
    """Seconds to send the first interaction response; later ones get 404 code 10062."""
    token_lifetime: float | None = 15 * 60.0
    """Seconds an interaction token stays usable on webhook routes; then 401 code 50027."""
    enforce_attachment_size: bool = True
    """Refuse files over ``attachment_size_limit`` (interaction's, else guild's): 413/40005."""
    max_files: int | None = 10
    """Files per message; more is a 400 Invalid Form Body."""
    single_initial_response: bool = True
    """A second callback for one interaction gets 400 code 40060."""
    require_ack_before_followup: bool = True
    """Webhook routes (followups, @original) 404 until the interaction was acknowledged."""
    edit_rate_limit: RateLimit | None = field(default_factory=lambda: RateLimit(5, 5.0))
    """Message edits per channel; excess edits get 429 with ``retry_after``."""
    rate_limit_headers: bool = True
    """Send X-RateLimit-* headers on rate-limited routes, so discord.py can pace itself."""
    rate_limit_is_violation: bool = False
    """Count every 429 the edit limiter gives as a violation (a bot that never hits it)."""
    validate_payloads: bool = True
    """Refuse message bodies and command definitions Discord refuses (lengths, counts, ids)."""
    require_response: bool = True
    """``assert_clean`` reports interactions that never got any initial response."""

    @classmethod
    def lenient(cls) -> Rules:
        """Every rule off: the server accepts whatever discord.py sends."""
        return cls(
            response_deadline=None,
            token_lifetime=None,
            enforce_attachment_size=False,
            max_files=None,
            single_initial_response=False,
            require_ack_before_followup=False,
            edit_rate_limit=None,
            rate_limit_headers=False,
            validate_payloads=False,
            require_response=False,
        )


@dataclass(frozen=True)
class Violation:
    """One broken rule (or unimplemented route), kept for :meth:`DiscordTestServer.assert_clean`."""

    kind: str
    message: str
    request: RecordedRequest | None = None
    interaction_id: int | None = None

    def __str__(self) -> str:
        where = f" [{self.request.method} {self.request.path}]" if self.request else ""
        return f"{self.kind}: {self.message}{where}"


@dataclass(frozen=True)
class RateDecision:
    """Outcome of a rate-limit check, with the numbers the X-RateLimit headers carry."""

    allowed: bool
    limit: int
    remaining: int
    reset_after: float


class SlidingWindowLimiter:
    """Per-key sliding windows on server-clock timestamps."""

    def __init__(self) -> None:
        self._hits: dict[str, deque[float]] = {}

    def hit(self, key: str, rule: RateLimit, now: float) -> RateDecision:
        """Count one request at ``now`` unless the window is full."""
        window = self._hits.setdefault(key, deque())
        while window and window[0] <= now - rule.per:
            window.popleft()
        if len(window) >= rule.count:
            return RateDecision(False, rule.count, 0, max(window[0] + rule.per - now, 0.001))
        window.append(now)
        reset_after = window[0] + rule.per - now
        return RateDecision(True, rule.count, rule.count - len(window), max(reset_after, 0.001))


__all__ = [
    "MIB",
    "RateDecision",
    "RateLimit",
    "Rules",
    "SlidingWindowLimiter",
    "Violation",
    "ViolationKind",
]
