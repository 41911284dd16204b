"""Sessions, locks and the retry rule: how every ledger read and write reaches the database.

Every write runs in its own short transaction. Writes that read before they write (a
reservation checks the allowance, then inserts) are serialized per user: on SQLite by
`BEGIN IMMEDIATE` (one writer at a time, waiting on the busy timeout), on PostgreSQL by a
transaction-scoped advisory lock on (guild, user). A write that still finds SQLite locked
is retried a few times before `LedgerBusyError`; any other database error is wrapped as
`DatabaseUnavailable`, and a SQLite file deleted or replaced under the bot as `DatabaseGone`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Executable, func, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from .database import make_sessionmaker, writer
from .errors import DatabaseGone, DatabaseUnavailable, LedgerBusyError

__all__ = ["PING_TIMEOUT", "RetryPolicy", "Transactions", "utcnow"]

log = logging.getLogger(__name__)

T = TypeVar("T")
#: Seconds the database may take to answer a health check before it counts as down.
PING_TIMEOUT = 3.0


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often a write that finds SQLite locked past its busy timeout is tried again."""

    attempts: int = 4
    first_delay_s: float = 0.05  # doubled after each failure

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")


def _is_locked(exc: OperationalError) -> bool:
    text = str(exc.orig).lower()
    return "database is locked" in text or "database table is locked" in text


def _lock_key(guild_id: int, user_id: int) -> int:
    """A stable signed 64-bit key for PostgreSQL's advisory lock on one user in one guild."""
    digest = hashlib.blake2b(
        f"imagine-bot:quota:{guild_id}:{user_id}".encode(), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big", signed=True)


def _sqlite_file(engine: AsyncEngine) -> Path | None:
    name = engine.url.database
    if engine.dialect.name != "sqlite" or not name or name == ":memory:":
        return None
    return Path(name).resolve()


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return (stat.st_dev, stat.st_ino)


class Transactions:
    """Runs units of work on one engine, each in one transaction (see the module doc).

    `clock` returns timezone-aware UTC now: every ledger module takes its times from here,
    so a test's fake clock moves them all.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        clock: Callable[[], datetime] = utcnow,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.engine = engine
        self._clock = clock
        self._retry = retry or RetryPolicy()
        self._postgres = engine.dialect.name == "postgresql"
        self._file = _sqlite_file(engine)  # watched: a deleted or replaced file is noticed
        self._file_id = _file_id(self._file) if self._file is not None else None
        self._reads = make_sessionmaker(engine)
        self._writes = make_sessionmaker(writer(engine))
        # SQLite has one writer at a time anyway: queue this process's writers here, before
        # they check out a pooled connection, instead of in BEGIN IMMEDIATE's busy wait,
        # where each holds a connection that reads then wait for (measured by
        # bench/load_bench.py: first-answer p99 3.5 s -> under 0.1 s).
        self._write_lock: asyncio.Lock | None = None if self._postgres else asyncio.Lock()

    def now(self) -> datetime:
        return self._clock()

    def _check_file(self) -> None:
        """Raise `DatabaseGone` if the SQLite file was deleted or replaced while open: SQLite
        would go on writing into the deleted file, and every record would be lost."""
        if self._file is None or self._file_id is None:
            return
        if _file_id(self._file) != self._file_id:
            raise DatabaseGone(str(self._file))

    async def ping(self) -> bool:
        """Whether the database answers a query within `PING_TIMEOUT` seconds (health)."""
        self._check_file()

        async def query() -> None:
            async with self.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))

        await asyncio.wait_for(query(), PING_TIMEOUT)
        return True

    async def _run(self, work: Callable[[AsyncSession], Awaitable[T]], *, write: bool) -> T:
        """Run `work` in one transaction, again from the start if SQLite stays locked."""
        self._check_file()
        sessions = self._writes if write else self._reads
        delay = self._retry.first_delay_s
        for attempt in range(1, self._retry.attempts + 1):
            try:
                async with contextlib.AsyncExitStack() as stack:
                    if write and self._write_lock is not None:
                        await stack.enter_async_context(self._write_lock)
                    session = await stack.enter_async_context(sessions())
                    await stack.enter_async_context(session.begin())
                    return await work(session)
            except OperationalError as exc:
                if not _is_locked(exc):  # full, read-only, unreachable: say so, in our terms
                    raise DatabaseUnavailable(exc) from exc
                if attempt == self._retry.attempts:
                    raise LedgerBusyError(attempt, exc) from exc
                log.warning("ledger: database locked (attempt %d), retrying: %s", attempt, exc)
                await asyncio.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    async def read(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """Run `work` in a read transaction."""
        return await self._run(work, write=False)

    async def write(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """Run `work` in a write transaction (queued behind this process's other writers)."""
        return await self._run(work, write=True)

    async def execute(self, stmt: Executable) -> int:
        """Run one write statement (an UPDATE or DELETE) on its own; the rows it changed."""
        stmt = stmt.execution_options(synchronize_session=False)

        async def work(session: AsyncSession) -> int:
            result: Any = await session.execute(stmt)
            return int(result.rowcount)

        return await self.write(work)

    async def lock_user(self, session: AsyncSession, guild_id: int, user_id: int) -> None:
        """Serialize writes about one user's quota (SQLite's BEGIN IMMEDIATE already does)."""
        if self._postgres:
            await session.execute(select(func.pg_advisory_xact_lock(_lock_key(guild_id, user_id))))
