"""Discord's edit rate limit per channel (``rules.edit_rate_limit``), shared by the channel and
the webhook edit routes: the X-RateLimit headers on each edit, and a 429 when the window is full."""

from __future__ import annotations

import math

from aiohttp import web

from ..errors import GENERAL_ERROR, ApiError
from ..recording import RecordedRequest
from ..rules import RateDecision, SlidingWindowLimiter, ViolationKind
from ..state import Channel, State
from .base import RECORD


class EditLimiter:
    """Counts message edits per channel on the server clock."""

    def __init__(self, state: State, limiter: SlidingWindowLimiter) -> None:
        self.state = state
        self.limiter = limiter

    def check(self, request: web.Request, channel: Channel) -> dict[str, str]:
        """Count an edit against the channel's window; 429 (with headers) when it is full."""
        rules = self.state.rules
        rule = rules.edit_rate_limit
        if rule is None:
            return {}
        decision = self.limiter.hit(f"edit:{channel.id}", rule, self.state.clock.now())
        headers = self.headers(decision, channel.id) if rules.rate_limit_headers else {}
        if decision.allowed:
            return headers
        record: RecordedRequest = request[RECORD]
        record.rate_limited = True
        retry_after = round(decision.reset_after, 3)
        headers = {
            **self.headers(decision, channel.id),
            "Retry-After": str(math.ceil(retry_after)),
        }
        raise ApiError(
            429,
            GENERAL_ERROR,
            "You are being rate limited.",
            violation=ViolationKind.RATE_LIMITED if rules.rate_limit_is_violation else None,
            detail=f"more than {rule.count} edits per {rule.per}s in channel {channel.id}",
            headers=headers,
            body={
                "message": "You are being rate limited.",
                "retry_after": retry_after,
                "global": False,
                "code": 0,
            },
        )

    def headers(self, decision: RateDecision, channel_id: int) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(decision.limit),
            "X-RateLimit-Remaining": str(decision.remaining),
            "X-RateLimit-Reset": f"{self.state.clock.time() + decision.reset_after:.3f}",
            "X-RateLimit-Reset-After": f"{decision.reset_after:.3f}",
            "X-RateLimit-Bucket": f"edit-{channel_id}",
            "X-RateLimit-Scope": "user",
            "Via": "1.1 google",
        }


__all__ = ["EditLimiter"]
