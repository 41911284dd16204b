"""Running a real discord.py client against the server, with a watched task and clean shutdown.

``bot.start()`` swallows nothing but reports nothing either: a payload error inside the gateway
loop just ends the task. :func:`run_bot` watches that task (waits on the server fail at once if
it ends), captures discord.py's error logs, and always closes the client so no session, socket
or task outlives the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING

import discord
import yarl
from discord.gateway import DiscordWebSocket
from discord.http import Route

from .rules import ViolationKind

if TYPE_CHECKING:
    from .server import DiscordTestServer


class _ErrorCollector(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__(logging.ERROR)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class RunningBot:
    """A started client: ``task`` runs ``bot.start()``; ``logged_errors`` are discord.* ERROR logs
    (e.g. "Ignoring exception in command")."""

    bot: discord.Client
    task: asyncio.Task[None]
    logged_errors: list[logging.LogRecord] = field(default_factory=list)

    def error_messages(self) -> list[str]:
        return [
            r.getMessage() + (f" ({r.exc_info[1]!r})" if r.exc_info else "")
            for r in self.logged_errors
        ]


class run_bot:
    """Point discord.py at ``server``, start ``bot`` and wait until it is ready (``on_ready``).

    Sets ``discord.http.Route.BASE`` to ``server.api_base_url`` and, because discord.py falls
    back to ``DiscordWebSocket.DEFAULT_GATEWAY`` when a session is invalidated, that too; both
    are restored on exit. Errors from ``bot.start()`` before readiness (``LoginFailure``...)
    propagate unchanged; a crash after readiness fails the test on exit.
    """

    def __init__(
        self,
        server: DiscordTestServer,
        bot: discord.Client,
        *,
        token: str | None = None,
        ready_timeout: float = 10.0,
        shutdown_timeout: float = 10.0,
    ) -> None:
        self.server = server
        self.bot = bot
        self.token = token
        self.ready_timeout = ready_timeout
        self.shutdown_timeout = shutdown_timeout
        self._saved: tuple[str, yarl.URL] | None = None
        self._running: RunningBot | None = None
        self._handler: _ErrorCollector | None = None
        self._ready = False

    async def __aenter__(self) -> RunningBot:
        self._saved = (Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY)
        Route.BASE = self.server.api_base_url
        DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(self.server.gateway_url)
        errors: list[logging.LogRecord] = []
        self._handler = _ErrorCollector(errors)
        logging.getLogger("discord").addHandler(self._handler)
        try:
            await (
                self.bot.__aenter__()
            )  # sets up the loop and the ready event, like `async with bot`
            token = self.token if self.token is not None else self.server.application.token
            task = asyncio.create_task(self.bot.start(token), name="discord-bot-start")
            self._running = RunningBot(self.bot, task, errors)
            self.server.watch(task, "bot.start()")
            await self._wait_ready(task)
            self._ready = True
        except BaseException:
            await self._shutdown(raise_crash=False)
            raise
        return self._running

    async def _wait_ready(self, task: asyncio.Task[None]) -> None:
        ready = asyncio.create_task(self.bot.wait_until_ready(), name="discord-bot-ready")
        try:
            done, _ = await asyncio.wait(
                {ready, task}, timeout=self.ready_timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            if not ready.done():
                ready.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ready
        if ready in done:
            return
        if task.done():
            exc = task.exception()
            if exc is not None:
                raise exc
            raise AssertionError("bot.start() returned before the bot became ready")
        raise AssertionError(
            f"bot not ready after {self.ready_timeout}s (is guild_ready_timeout small?)\n"
            f"{self.server.describe()}"
        )

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._shutdown(raise_crash=exc_type is None)

    async def _shutdown(self, *, raise_crash: bool) -> None:
        crash: BaseException | None = None
        try:
            running = self._running
            if running is not None:
                task = running.task
                self.server.unwatch(task)
                if task.done() and not task.cancelled():
                    crash = task.exception()
                await self.bot.close()
                if not task.done():
                    try:
                        await asyncio.wait_for(asyncio.shield(task), self.shutdown_timeout)
                    except TimeoutError:
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError, Exception):
                            await task
                    except asyncio.CancelledError:
                        if not task.cancelled():
                            raise  # we were cancelled, not the bot task
                    except Exception:
                        pass  # an error while closing; a crash before it was captured above
            else:
                await self.bot.close()
        finally:
            if self._handler is not None:
                logging.getLogger("discord").removeHandler(self._handler)
                self._handler = None
            if self._saved is not None:
                Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY = self._saved
                self._saved = None
        if crash is not None and self._ready:  # before readiness the error itself propagates
            self.server.violate(ViolationKind.BOT_CRASHED, f"bot.start() ended with {crash!r}")
        if crash is not None and raise_crash:
            raise AssertionError(f"bot.start() crashed while the test ran: {crash!r}") from crash


__all__ = ["RunningBot", "run_bot"]
