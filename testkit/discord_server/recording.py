"""What the bot sent (every REST request) and the failures a test asked the server to inject."""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class UploadedFile:
    """One ``files[N]`` part of a multipart body, bytes intact."""

    field_name: str
    filename: str
    data: bytes
    content_type: str | None


@dataclass
class RecordedRequest:
    """One REST request and the answer it got; ``path`` is relative to the API base."""

    method: str
    path: str
    query: dict[str, str]
    json: Any
    files: list[UploadedFile]
    at: float
    status: int = 0
    response: Any = None
    injected: bool = False
    rate_limited: bool = False
    authorization: str | None = None

    def __str__(self) -> str:
        tag = " (injected)" if self.injected else ""
        return f"{self.method} {self.path} -> {self.status}{tag}"


@dataclass(frozen=True)
class Failure:
    """An answer to force, e.g. ``Failure(429, retry_after=0.1)`` or ``Failure(403, code=50013)``.

    Injected in order by :meth:`DiscordTestServer.inject_failures`.
    """

    status: int
    retry_after: float | None = None
    code: int = 0
    message: str | None = None
    is_global: bool = False

    def body(self) -> dict[str, Any]:
        """JSON body as Discord answers it for this status."""
        if self.status == 429:
            return {
                "message": self.message or "You are being rate limited.",
                "retry_after": self.retry_after if self.retry_after is not None else 0.05,
                "global": self.is_global,
                "code": self.code,
            }
        return {"message": self.message or f"{self.status}: injected failure", "code": self.code}


FailureSpec = Failure | tuple[int, float | None] | int


def as_failure(spec: FailureSpec) -> Failure:
    """Accept ``Failure``, ``(status, retry_after)`` or a bare status."""
    if isinstance(spec, Failure):
        return spec
    if isinstance(spec, int):
        return Failure(spec)
    status, retry_after = spec
    return Failure(status, retry_after)


@dataclass
class FailureInjection:
    """Queued failures for requests matching ``method`` and ``pattern`` (``re.search``, path)."""

    method: str
    pattern: re.Pattern[str]
    pending: deque[Failure]
    hits: list[RecordedRequest] = field(default_factory=list)

    @classmethod
    def create(
        cls, method: str, path_regex: str, failures: Iterable[FailureSpec]
    ) -> FailureInjection:
        return cls(method.upper(), re.compile(path_regex), deque(as_failure(f) for f in failures))

    def matches(self, method: str, path: str) -> bool:
        """Whether the next matching request should fail (``*`` matches any method)."""
        return (
            bool(self.pending)
            and self.method in ("*", method.upper())
            and self.pattern.search(path) is not None
        )

    @property
    def exhausted(self) -> bool:
        """All queued failures were answered."""
        return not self.pending
