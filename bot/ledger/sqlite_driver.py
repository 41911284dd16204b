"""SQLite through aiosqlite in one trip per statement, not four.

SQLAlchemy's aiosqlite adapter makes a statement four round trips between the event loop and
the connection's thread (open a cursor, execute, fetch the rows, close the cursor), and each is
resumed only when the loop comes round to it. Under a burst of a thousand commands one trip
took 15-40 ms, a group of ledger writes 35-95 trips: 0.5-1.3 s each, and every "queued" behind
them (issue 24's load benchmark). Here a statement is one function run on the connection's
thread (cursor, execute, rows, close) and one trip back.

Everything else is SQLAlchemy's adapter as it is: the same errors (`_handle_exception`), the
same lock per connection, the same connection object; it is given to `create_async_engine`
as its DBAPI module (`module=`, SQLAlchemy's way to supply one), so URLs stay
`sqlite+aiosqlite://`.
"""

from __future__ import annotations

import collections
import sqlite3
from collections.abc import Sequence
from typing import Any

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)

__all__ = ["one_trip_dbapi"]

#: What a statement leaves behind: description, rowcount, lastrowid, rows.
_Outcome = tuple[Any, int, int | None, list[Any]]


def _run(connection: sqlite3.Connection, operation: str, parameters: Any, many: bool) -> _Outcome:
    """One statement on the connection's own thread, its rows read and its cursor closed."""
    cursor = connection.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        elif parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        rows = cursor.fetchall() if cursor.description else []
        return cursor.description, cursor.rowcount, cursor.lastrowid, rows
    finally:
        cursor.close()


class _OneTripCursor(AsyncAdapt_aiosqlite_cursor):
    """A cursor that holds a statement's outcome, made in one trip to the thread."""

    __slots__ = ("_outcome",)

    def __init__(self, adapt_connection: AsyncAdapt_aiosqlite_connection) -> None:
        # No driver cursor (opening one is a trip of its own): each statement opens its own.
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._soft_closed_memoized = {}  # type: ignore[assignment]
        self._rows = collections.deque()
        self._outcome: _Outcome = (None, -1, None, [])

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
        connection: aiosqlite.Connection = self._connection  # type: ignore[assignment]
        async with self._adapt_connection._execute_mutex:
            self._outcome = await connection._execute(
                _run, connection._conn, operation, parameters, many
            )
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
    __slots__ = ()
    _cursor_cls = _OneTripCursor


class _OneTripDBAPI(AsyncAdapt_aiosqlite_dbapi):
    def connect(self, *arg: Any, **kw: Any) -> _OneTripConnection:
        adapted = super().connect(*arg, **kw)
        return _OneTripConnection(self, adapted._connection)


def one_trip_dbapi() -> Any:
    """The DBAPI module to give `create_async_engine` for `sqlite+aiosqlite` URLs."""
    return _OneTripDBAPI(aiosqlite, sqlite3)
