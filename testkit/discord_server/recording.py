"""What the bot sent (every REST request) and the failures a test asked the server to inject."""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterable
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


#: An action run on a request after it is handled, before its answer leaves.
AnswerHook = Callable[[RecordedRequest], None]
AnswerTest = Callable[[RecordedRequest], bool]


class InjectionQueue:
    """What a test queued for coming requests: failures to answer instead of the handler, and
    actions to run before an answer leaves. The REST middleware consults it on each request."""

    def __init__(self) -> None:
        self.injections: list[FailureInjection] = []
        self.hooks: list[tuple[str, re.Pattern[str], AnswerHook, AnswerTest]] = []

    def inject(
        self, method: str, path_regex: str, failures: Iterable[FailureSpec]
    ) -> FailureInjection:
        """Queue ``failures`` for the requests matching ``method`` and ``path_regex``."""
        injection = FailureInjection.create(method, path_regex, failures)
        self.injections.append(injection)
        return injection

    def before_answering(
        self, method: str, path_regex: str, action: AnswerHook, when: AnswerTest
    ) -> None:
        """Run ``action`` once, on the next matching request, before its answer leaves."""
        self.hooks.append((method, re.compile(path_regex), action, when))

    def take(self, method: str, path: str, record: RecordedRequest) -> Failure | None:
        """The failure to answer this request with, if one is queued (counted as used)."""
        for injection in self.injections:
            if injection.matches(method, path):
                failure = injection.pending.popleft()
                injection.hits.append(record)
                record.injected = True
                return failure
        return None

    def answering(self, record: RecordedRequest) -> None:
        """Run the ``before_answering`` actions this request is due (each once)."""
        for hook in list(self.hooks):
            method, pattern, action, when = hook
            if (
                method in ("*", record.method)
                and pattern.search(record.path) is not None
                and when(record)
            ):
                self.hooks.remove(hook)
                action(record)


__all__ = [
    "AnswerHook",
    "AnswerTest",
    "Failure",
    "FailureInjection",
    "FailureSpec",
    "InjectionQueue",
    "RecordedRequest",
    "UploadedFile",
    "as_failure",
]
