"""SQLite through aiosqlite in one trip per statement, not four, and none for BEGIN or an empty
COMMIT.

SQLAlchemy's aiosqlite adapter makes a statement four round trips between the event loop and
the connection's thread (open a cursor, execute, fetch the rows, close the cursor), and each is
resumed only when the loop comes round to it. Under a burst of a thousand commands one trip
took 15-40 ms, a group of ledger writes 35-95 trips: 0.5-1.3 s each, and every "queued" behind
them (issue 24's load benchmark). Here a statement is one function run on the connection's
thread (cursor, execute, rows, close) and one trip back. Two trips more go:

- `BEGIN …` is held back and run on the thread just before the transaction's first statement,
  in that statement's trip (its lock is taken before anything is read, as before; an error of
  the BEGIN, "database is locked", is that statement's error).
- COMMIT and ROLLBACK are not sent when SQLite holds no transaction (every statement's trip
  reports whether it does): a read transaction (`database.reader`, no BEGIN) ends without one.

Everything else is SQLAlchemy's adapter as it is: the same errors (`_handle_exception`), the
same lock per connection, the same connection object; it is given to `create_async_engine`
as its DBAPI module (`module=`, SQLAlchemy's way to supply one), so URLs stay
`sqlite+aiosqlite://`.
"""

from __future__ import annotations

import collections
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)

__all__ = ["one_trip_dbapi"]

#: What a statement leaves behind: description, rowcount, lastrowid, rows, and whether
#: SQLite holds a transaction after it.
_Outcome = tuple[Any, int, int | None, list[Any], bool]


def _run(
    connection: sqlite3.Connection,
    operation: str,
    parameters: Any,
    many: bool,
    begin: str | None,
) -> _Outcome:
    """One statement on the connection's own thread, after the `begin` held back for it; its
    rows read and its cursor closed."""
    cursor = connection.cursor()
    try:
        if begin is not None:
            cursor.execute(begin)
        if many:
            cursor.executemany(operation, parameters)
        elif parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        rows = cursor.fetchall() if cursor.description else []
        open_ = connection.in_transaction
        return cursor.description, cursor.rowcount, cursor.lastrowid, rows, open_
    finally:
        cursor.close()


def _is_begin(operation: Any) -> bool:
    return isinstance(operation, str) and operation[:5].upper() == "BEGIN"


class _OneTripCursor(AsyncAdapt_aiosqlite_cursor):
    """A cursor that holds a statement's outcome, made in one trip to the thread."""

    __slots__ = ("_outcome",)

    def __init__(self, adapt_connection: AsyncAdapt_aiosqlite_connection) -> None:
        # No driver cursor (opening one is a trip of its own): each statement opens its own.
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._soft_closed_memoized = {}  # type: ignore[assignment]
        self._rows = collections.deque()
        self._outcome: _Outcome = (None, -1, None, [], False)

    @property
    def description(self) -> Any:
        return self._outcome[0]

    @property
    def rowcount(self) -> int:
        return self._outcome[1]

    @property
    def arraysize(self) -> int:
        return 1  # sqlite3's default; the rows are all read already

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        pass

    @property
    def lastrowid(self) -> int:
        return self._outcome[2]  # type: ignore[return-value]

    async def _trip(self, operation: Any, parameters: Any, many: bool) -> None:
        adapted: _OneTripConnection = self._adapt_connection  # type: ignore[assignment]
        if not many and not parameters and _is_begin(operation):
            adapted.begin = operation  # sent with the next statement
            self._outcome = (None, -1, None, [], True)
            self._rows = collections.deque()
            return
        connection: aiosqlite.Connection = self._connection  # type: ignore[assignment]
        async with adapted._execute_mutex:
            begin, adapted.begin = adapted.begin, None
            try:
                self._outcome = await connection._execute(
                    _run, connection._conn, operation, parameters, many, begin
                )
            except BaseException:
                adapted.open = True  # unknown: let COMMIT or ROLLBACK go to SQLite
                raise
        adapted.open = self._outcome[4]
        self._rows = collections.deque(self._outcome[3])

    async def _execute_async(self, operation: Any, parameters: Any) -> None:
        await self._trip(operation, parameters, many=False)

    async def _executemany_async(self, operation: Any, seq_of_parameters: Sequence[Any]) -> None:
        await self._trip(operation, seq_of_parameters, many=True)

    async def _async_soft_close(self) -> None:
        return  # nothing stays open between statements

    def close(self) -> None:
        self._rows.clear()


class _OneTripConnection(AsyncAdapt_aiosqlite_connection):
    """SQLAlchemy's adapted connection, holding back BEGIN and skipping an empty COMMIT."""

    __slots__ = ("begin", "open")
    _cursor_cls = _OneTripCursor

    def __init__(self, dbapi: Any, connection: Any) -> None:
        super().__init__(dbapi, connection)
        self.begin: str | None = None  # a BEGIN held back for the next statement
        self.open = True  # SQLite may hold a transaction (until a trip says otherwise)

    def _end(self, end: Callable[[], None]) -> None:
        """COMMIT or ROLLBACK, only if SQLite holds a transaction: a BEGIN held back never
        reached it, and after a read on its own there is nothing to end."""
        self.begin = None
        if self.open:
            end()
            self.open = False

    def commit(self) -> None:
        self._end(super().commit)

    def rollback(self) -> None:
        self._end(super().rollback)


class _OneTripDBAPI(AsyncAdapt_aiosqlite_dbapi):
    def connect(self, *arg: Any, **kw: Any) -> _OneTripConnection:
        adapted = super().connect(*arg, **kw)
        return _OneTripConnection(self, adapted._connection)


def one_trip_dbapi() -> Any:
    """The DBAPI module to give `create_async_engine` for `sqlite+aiosqlite` URLs."""
    return _OneTripDBAPI(aiosqlite, sqlite3)
