"""Sessions, locks and the retry rule: how every ledger read and write reaches the database.

**Writes are committed in groups.** A write is a unit of work (`write(work)`); one writer task
takes every unit waiting (up to `GROUP_MAX`), runs them in ONE transaction, and commits once:
a burst of a thousand `/imagine`s is a handful of commits, not a thousand queued on SQLite's
single writer (each a full journal cycle with `synchronous = FULL`) or on a pool of
connections. A unit's own failure is its alone: the group is then rolled back and run again
with each unit in a savepoint (the failing one's changes rolled back, the others' committed);
a group whose units all succeed needs no savepoint (each costs two round trips to the
database). Units of the same batch (`write_batch`: the reservations) run together, as one
call that reads what they need in a few statements, instead of a few statements each. Each
caller gets its unit's result only once the group is committed, so nothing is reported done
before it is durable; no caller of a group has its result before the others, so the order
they run in within it is free. Urgent units (`urgent=True`: a reservation, which someone
waits on for "queued") go first: while any wait, a group takes only them and the units that
have waited `OVERDUE_S`. Reads use connections of their own and never wait for the
writer; on SQLite each of their statements reads on its own (`database.reader`), so they do
not hold the writer's commit either, and no more than `READS_AT_ONCE` hold a pooled
connection, so the writer never waits for one behind them.

Writes that read before they write (a reservation checks the allowance, then inserts) see
the units before them in the group, and are serialized per user across processes: on SQLite
by `BEGIN IMMEDIATE` (one writer at a time, waiting on the busy timeout), on PostgreSQL by a
transaction-scoped advisory lock on (guild, user). A group that still finds SQLite locked is
retried a few times before `LedgerBusyError`; any other database error is wrapped as
`DatabaseUnavailable` (for every unit of the group: none of them committed), and a SQLite
file deleted or replaced under the bot as `DatabaseGone`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Executable, func, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from .database import make_sessionmaker, reader, writer
from .errors import DatabaseGone, DatabaseUnavailable, LedgerBusyError

__all__ = [
    "GROUP_MAX",
    "PING_TIMEOUT",
    "READS_AT_ONCE",
    "Batch",
    "RetryPolicy",
    "Transactions",
    "utcnow",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
I = TypeVar("I")  # noqa: E741
#: Units of one batch run together: their items in, one result per item out, in order.
Batch = Callable[[AsyncSession, Sequence[Any]], Awaitable[Sequence[Any]]]
#: Seconds the database may take to answer a health check before it counts as down.
PING_TIMEOUT = 3.0
#: Units of work committed together at most (a group's transaction stays short).
GROUP_MAX = 256
#: Reads holding a pooled connection at once, fewer than the pool holds (5 + 10 overflow by
#: default): the others wait here, and the writer always finds a connection, instead of
#: queueing for one behind a burst's reads (`/info`s) and every write with it.
READS_AT_ONCE = 8
#: PostgreSQL's advisory locks on many keys, taken in the (sorted) array's order.
_LOCK_MANY = text("SELECT pg_advisory_xact_lock(k) FROM unnest(CAST(:keys AS bigint[])) AS k")
#: Seconds the writer task waits for more writes before it ends (`write` starts it again).
WRITER_IDLE_S = 5.0
#: Seconds a unit that is not urgent waits at most behind urgent ones.
OVERDUE_S = 0.5


@dataclass(eq=False, slots=True)
class _Unit:
    """One write waiting for the writer: its work (or its batch and item), and its caller's
    future."""

    work: Callable[[AsyncSession], Awaitable[Any]] | None
    done: asyncio.Future[Any]
    batch: Batch | None = None
    item: Any = None
    urgent: bool = False
    since: float = 0.0  # the loop's time when it came

    async def run_alone(self, session: AsyncSession) -> Any:
        if self.batch is None:
            assert self.work is not None
            return await self.work(session)
        (result,) = await self.batch(session, [self.item])
        return result


class _UnitFailed(Exception):
    """A unit of a group run without savepoints failed: run the group again, isolated."""


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
        self._reads = make_sessionmaker(reader(engine))
        self._writes = make_sessionmaker(writer(engine))
        self._units: list[_Unit] = []  # writes waiting for the writer
        self._wake: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._readers = asyncio.Semaphore(READS_AT_ONCE)

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
        sessions = self._writes if write else self._reads
        delay = self._retry.first_delay_s
        for attempt in range(1, self._retry.attempts + 1):
            self._check_file()
            try:
                async with sessions() as session, session.begin():
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
        """Run `work` in a read transaction (`READS_AT_ONCE` at most hold a connection)."""
        async with self._readers:
            return await self._run(work, write=False)

    async def write(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """Run `work` in the next group's transaction (see the module doc); its result once
        the group is committed, or its own exception, or the group's commit error."""
        return await self._enqueue(_Unit(work, asyncio.get_running_loop().create_future()))

    async def write_batch(
        self,
        batch: Callable[[AsyncSession, Sequence[I]], Awaitable[Sequence[T]]],
        item: I,
        *,
        urgent: bool = False,
    ) -> T:
        """Like `write`, for `item` of `batch`: the group's items of the same `batch` are run
        by one call (`batch(session, items)`, one result per item, in order), which must give
        each item the result it would get alone after those before it. `urgent`: written
        before the units that are not (see the module doc)."""
        future = asyncio.get_running_loop().create_future()
        return await self._enqueue(_Unit(None, future, batch, item, urgent))

    async def _enqueue(self, unit: _Unit) -> Any:
        unit.since = asyncio.get_running_loop().time()
        self._units.append(unit)
        if self._writer is None or self._writer.done():
            self._wake = asyncio.Event()
            self._writer = asyncio.create_task(self._write_groups(), name="ledger-writer")
        assert self._wake is not None
        self._wake.set()
        return await asyncio.shield(unit.done)

    async def close(self) -> None:
        """Let the writer write what waits, then end (the ledger is closing)."""
        self._closing = True
        writer = self._writer
        if writer is not None and not writer.done():
            assert self._wake is not None
            self._wake.set()
            await writer

    async def _write_groups(self) -> None:
        """The writer: groups of waiting units, one transaction each, for as long as any
        come (it ends when idle, and `write` starts it again)."""
        assert self._wake is not None
        while True:
            if not self._units:
                if self._closing:
                    return
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), WRITER_IDLE_S)
                except TimeoutError:
                    if not self._units:
                        return
                continue
            group = [u for u in self._next_group() if not u.done.cancelled()]
            try:
                try:
                    results = await self._run(
                        lambda session, group=group: self._together(session, group), write=True
                    )
                except _UnitFailed:  # rolled back: again, each unit in its own savepoint
                    results = await self._run(
                        lambda session, group=group: self._isolated(session, group), write=True
                    )
            except Exception as exc:  # none of the group committed: each caller hears why
                for unit in group:
                    if not unit.done.done():
                        unit.done.set_exception(exc)
                continue
            for unit, (ok, value) in zip(group, results, strict=True):
                if unit.done.done():
                    continue
                if ok:
                    unit.done.set_result(value)
                else:
                    unit.done.set_exception(value)

    def _next_group(self) -> list[_Unit]:
        """Take the next group from the waiting units: `GROUP_MAX` at most, the urgent ones
        and the overdue ones only while any are urgent (see the module doc)."""
        if any(u.urgent for u in self._units):
            overdue = asyncio.get_running_loop().time() - OVERDUE_S
            first = [u for u in self._units if u.urgent or u.since <= overdue][:GROUP_MAX]
            taken = set(map(id, first))
            self._units = [u for u in self._units if id(u) not in taken]
            return first
        group, self._units = self._units[:GROUP_MAX], self._units[GROUP_MAX:]
        return group

    @staticmethod
    async def _together(session: AsyncSession, group: list[_Unit]) -> list[tuple[bool, Any]]:
        """Every unit of the group without savepoints, each batch's units in one call: all
        (True, result), or `_UnitFailed` when one of them raised (the transaction is then
        rolled back, and `_isolated` runs the group)."""
        results: dict[int, Any] = {}
        for n, unit in enumerate(group):
            if n in results:
                continue  # a unit of a batch run already
            try:
                if unit.batch is None:
                    assert unit.work is not None
                    results[n] = await unit.work(session)
                    continue
                members = [m for m, other in enumerate(group) if other.batch == unit.batch]
                found = await unit.batch(session, [group[m].item for m in members])
                results.update(zip(members, found, strict=True))
            except OperationalError:
                raise  # the database's, not the unit's: the whole group is retried or fails
            except Exception as exc:
                raise _UnitFailed() from exc
        return [(True, results[n]) for n in range(len(group))]

    @staticmethod
    async def _isolated(session: AsyncSession, group: list[_Unit]) -> list[tuple[bool, Any]]:
        """Each unit in a savepoint of the group's transaction: (True, its result) or
        (False, its exception), its own changes rolled back."""
        results: list[tuple[bool, Any]] = []
        for unit in group:
            try:
                async with session.begin_nested():
                    results.append((True, await unit.run_alone(session)))
            except OperationalError:
                raise  # the database's, not the unit's: the whole group is retried or fails
            except Exception as exc:
                results.append((False, exc))
        return results

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

    async def lock_users(self, session: AsyncSession, users: Iterable[tuple[int, int]]) -> None:
        """`lock_user` for many (guild, user) pairs in one statement, always in one order (two
        processes locking overlapping sets never wait on each other in a cycle)."""
        if self._postgres:
            keys = sorted({_lock_key(guild_id, user_id) for guild_id, user_id in users})
            await session.execute(_LOCK_MANY, {"keys": keys})
