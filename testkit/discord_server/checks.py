"""Checks and waits, the last part of the test API: what the bot sent, the rules it broke, and
awaiting any condition without sleeping (re-checked on every server change, failing early when
a watched bot task ends)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from .gateway import Gateway
from .interactions import Interaction, InteractionLog
from .recording import FailureInjection, InjectionQueue, RecordedRequest
from .rules import Violation, ViolationKind
from .state import Channel, Message, State
from .waiting import Changes

T = TypeVar("T")


class Checks:
    """Part of :class:`~testkit.discord_server.server.DiscordTestServer`."""

    state: State
    gateway: Gateway
    interaction_log: InteractionLog
    injection_queue: InjectionQueue
    changes: Changes
    requests: list[RecordedRequest]
    violations: list[Violation]
    watched: dict[asyncio.Task[Any], str]
    default_timeout: float

    # -- records and rules ---------------------------------------------------------------------

    def requests_to(self, method: str, path_regex: str) -> list[RecordedRequest]:
        """Recorded requests with ``method`` (or ``*``) whose path matches ``path_regex``."""
        pattern = re.compile(path_regex)
        return [
            r
            for r in self.requests
            if method in ("*", r.method) and pattern.search(r.path) is not None
        ]

    @property
    def interactions(self) -> list[Interaction]:
        """Every interaction sent to the bot, in order."""
        return self.interaction_log.all

    @property
    def injections(self) -> list[FailureInjection]:
        """Every :meth:`inject_failures` queue, used up or not."""
        return self.injection_queue.injections

    @property
    def rate_limited_count(self) -> int:
        """429s given by the edit rate limiter (injected ones not counted)."""
        return sum(1 for r in self.requests if r.rate_limited)

    def violate(
        self,
        kind: str,
        message: str,
        *,
        request: RecordedRequest | None = None,
        interaction: Interaction | None = None,
    ) -> None:
        """Record a broken rule (used by handlers; tests may add their own)."""
        violation = Violation(
            kind=str(kind),
            message=message,
            request=request,
            interaction_id=interaction.id if interaction else None,
        )
        self.violations.append(violation)
        if interaction is not None:
            interaction.violations.append(violation)
        self.notify()

    def watch(self, task: asyncio.Task[Any], name: str = "bot") -> None:
        """Fail waits early (and ``assert_clean``) if ``task`` ends (a crashed ``bot.start()``)."""
        self.watched[task] = name
        task.add_done_callback(lambda _: self.notify())

    def unwatch(self, task: asyncio.Task[Any]) -> None:
        self.watched.pop(task, None)

    def all_violations(self) -> list[Violation]:
        """Recorded violations plus those only known at the end (no response, unused injections,
        crashed watched tasks)."""
        found = list(self.violations)
        if self.state.rules.require_response:
            for interaction in self.interactions:
                if not interaction.callbacks:
                    found.append(
                        Violation(
                            ViolationKind.NO_RESPONSE,
                            f"interaction {interaction.command_name or interaction.custom_id!r} "
                            "never got a response",
                            interaction_id=interaction.id,
                        )
                    )
        for injection in self.injections:
            if injection.pending:
                found.append(
                    Violation(
                        ViolationKind.UNUSED_INJECTION,
                        f"{len(injection.pending)} injected failure(s) for {injection.method} "
                        f"{injection.pattern.pattern!r} never used",
                    )
                )
        for task, name in self.watched.items():
            if task.done() and not task.cancelled() and task.exception() is not None:
                found.append(
                    Violation(ViolationKind.BOT_CRASHED, f"{name} ended with {task.exception()!r}")
                )
        return found

    def assert_clean(self, *, expected: Iterable[str] = ()) -> None:
        """Raise AssertionError if a rule was broken or an unimplemented route was hit.

        ``expected`` lists violation kinds the test provokes on purpose; each must then have
        happened at least once (so the test proves the rule fired).
        """
        wanted = {str(k) for k in expected}
        violations = self.all_violations()
        problems = [f"unexpected {v}" for v in violations if v.kind not in wanted]
        happened = {v.kind for v in violations}
        problems += [
            f"expected a {kind!r} violation but none happened" for kind in sorted(wanted - happened)
        ]
        if problems:
            raise AssertionError(
                "Discord test server found problems:\n  - "
                + "\n  - ".join(problems)
                + "\n"
                + self.describe()
            )

    def describe(self, last: int = 15) -> str:
        """Recent requests, interactions and violations, for failure messages."""
        lines = [f"last {min(last, len(self.requests))} of {len(self.requests)} requests:"]
        lines += [f"    {r}" for r in self.requests[-last:]]
        if self.interactions:
            lines.append("interactions:")
            lines += ["    " + i.describe().replace("\n", "\n    ") for i in self.interactions[-5:]]
        if self.violations:
            lines.append("violations:")
            lines += [f"    {v}" for v in self.violations]
        lines.append(
            f"gateway: identify={self.gateway.identify_count} resume={self.gateway.resume_count} "
            f"connected={self.gateway.connected}"
        )
        return "\n".join(lines)

    # -- waiting -------------------------------------------------------------------------------

    def notify(self) -> None:
        """Wake waiters; call after changing state from a test by hand."""
        self.changes.notify()

    async def wait_until(
        self,
        predicate: Callable[[], T | None],
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        what: str = "a condition",
        seen: Callable[[], str] | None = None,
    ) -> T:
        """Await ``predicate()`` becoming truthy (re-checked on every server change)."""
        return await self.changes.wait_for(
            predicate,
            timeout=self.default_timeout if timeout is None else timeout,
            what=what,
            seen=seen or self.describe,
            abort=self.abort_reason,
        )

    async def wait_for_message(
        self,
        channel: Channel | int,
        predicate: Callable[[Message], bool] | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Message:
        """The first message in ``channel`` (existing or future, not deleted or "thinking")
        that matches ``predicate``; edits are re-checked."""
        ch = self.state.channel(channel)

        def check() -> Message | None:
            return next(
                (
                    m
                    for m in ch.visible_messages()
                    if not m.loading and (predicate is None or predicate(m))
                ),
                None,
            )

        def seen() -> str:
            return (
                f"messages in {ch!r}:\n"
                + "\n".join(f"    {m!r}" for m in ch.messages)
                + "\n"
                + self.describe()
            )

        return await self.wait_until(check, timeout=timeout, what=f"a message in {ch!r}", seen=seen)

    async def wait_for_request(
        self,
        method: str,
        path_regex: str,
        *,
        status: int | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> RecordedRequest:
        """The first recorded request (past or future) matching, optionally with ``status``."""

        def check() -> RecordedRequest | None:
            return next(
                (
                    r
                    for r in self.requests_to(method, path_regex)
                    if r.status and (status is None or r.status == status)
                ),
                None,
            )

        return await self.wait_until(
            check, timeout=timeout, what=f"a {method} {path_regex} request"
        )

    async def wait_for_identify(
        self,
        count: int = 1,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> None:
        await self.wait_until(
            lambda: self.gateway.identify_count >= count,
            timeout=timeout,
            what=f"{count} IDENTIFY(s)",
        )

    async def wait_for_resume(
        self,
        count: int = 1,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> None:
        await self.wait_until(
            lambda: self.gateway.resume_count >= count, timeout=timeout, what=f"{count} RESUME(s)"
        )

    def abort_reason(self) -> str | None:
        """Why waiting is pointless: a watched task (the bot) ended."""
        for task, name in self.watched.items():
            if task.done():
                if task.cancelled():
                    return f"{name} was cancelled"
                exc = task.exception()
                return f"{name} ended with {exc!r}" if exc else f"{name} returned"
        return None


__all__ = ["Checks"]
