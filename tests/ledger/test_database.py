"""Engine set-up: the URL lookup, SQLite pragmas and locking, and retries when locked."""

from __future__ import annotations

import asyncio
import logging
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from bot.ledger import (
    DEFAULT_DATABASE_URL,
    Ledger,
    LedgerBusyError,
    LedgerError,
    QuotaPolicy,
    RetryPolicy,
    create_engine,
    database_url,
)
from bot.ledger.database import reader, writer

from .conftest import FakeClock
from .conftest import make_request as req


def _toml(path: Path, url: str) -> Path:
    path.write_text(f'[discord]\ntoken = "x"\n\n[database]\nurl = "{url}"\n')
    return path


def test_url_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    env: dict[str, str] = {}
    assert database_url(environ=env) == DEFAULT_DATABASE_URL  # no config.toml here
    _toml(tmp_path / "config.toml", "sqlite+aiosqlite:///cwd.db")
    assert database_url(environ=env) == "sqlite+aiosqlite:///cwd.db"
    env["IMAGINE_BOT_CONFIG"] = str(_toml(tmp_path / "env.toml", "sqlite+aiosqlite:///env.db"))
    assert database_url(environ=env) == "sqlite+aiosqlite:///env.db"
    named = _toml(tmp_path / "named.toml", "sqlite+aiosqlite:///named.db")
    assert database_url(config_path=named, environ=env) == "sqlite+aiosqlite:///named.db"
    env["IMAGINE_BOT_DATABASE_URL"] = "postgresql+asyncpg://u@h/env"
    assert database_url(config_path=named, environ=env) == "postgresql+asyncpg://u@h/env"
    assert database_url("sqlite+aiosqlite:///x.db", environ=env) == "sqlite+aiosqlite:///x.db"


def test_config_without_database_section_uses_default(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[discord]\ntoken = "x"\n')
    assert database_url(config_path=path, environ={}) == DEFAULT_DATABASE_URL


def test_bad_config_files(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="not found"):
        database_url(environ={"IMAGINE_BOT_CONFIG": str(tmp_path / "missing.toml")})
    bad = tmp_path / "bad.toml"
    bad.write_text("[database\n")
    with pytest.raises(LedgerError, match="cannot read"):
        database_url(config_path=bad, environ={})
    wrong = tmp_path / "wrong.toml"
    wrong.write_text("[database]\nurl = 5\n")
    with pytest.raises(LedgerError, match="must be a string"):
        database_url(config_path=wrong, environ={})


async def test_sqlite_connections_get_a_rollback_journal_and_busy_timeout(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'p.db'}", busy_timeout_s=2.5)
    try:
        async with engine.connect() as conn:
            pragmas = [
                (await conn.execute(text(f"PRAGMA {name}"))).scalar()
                for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
            ]
    finally:
        await engine.dispose()
    assert pragmas == ["delete", 2, 1, 2500]  # synchronous 2: FULL


async def test_writer_transactions_take_the_write_lock_at_begin(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        async with engine.begin() as conn:  # a plain (deferred) transaction that only reads
            await conn.execute(text("SELECT 1"))
            other.execute("BEGIN IMMEDIATE")  # another writer can still start
            other.execute("ROLLBACK")
        async with writer(engine).begin() as conn:
            await conn.execute(text("SELECT 1"))
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
    finally:
        other.close()
        await engine.dispose()


class _RetryWatcher(logging.Handler):
    """Sets an asyncio event when the ledger logs that it is retrying a locked write."""

    def __init__(self) -> None:
        super().__init__()
        self.retried = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "locked" in record.getMessage():
            self.retried.set()


@pytest.fixture
def retry_watcher() -> Iterator[_RetryWatcher]:
    handler = _RetryWatcher()
    log = logging.getLogger("bot.ledger")  # the package: whichever module logs the retry
    log.addHandler(handler)
    yield handler
    log.removeHandler(handler)


@pytest.fixture
def sqlite_file(sqlite_template: Path, tmp_path: Path) -> Path:
    """A migrated SQLite file (these tests lock it from a second, plain sqlite3 connection)."""
    path = tmp_path / "locked.db"
    shutil.copyfile(sqlite_template, path)
    return path


async def test_write_survives_a_lock_held_past_the_busy_timeout(
    sqlite_file: Path, clock: FakeClock, retry_watcher: _RetryWatcher
) -> None:
    path = sqlite_file
    engine = create_engine(f"sqlite+aiosqlite:///{path}", busy_timeout_s=0.01)
    ledger = Ledger(engine, QuotaPolicy(), clock=clock, retry=RetryPolicy(50, 0.001))
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        task = asyncio.create_task(ledger.reserve(req()))
        async with asyncio.timeout(30):  # a safety net only: the event comes at once
            await retry_watcher.retried.wait()  # the ledger hit the lock and is retrying
        assert not task.done()
        other.execute("COMMIT")
        reservation = await task
        assert reservation.accepted
        assert await ledger.get_job(reservation.job.id) == reservation.job
    finally:
        other.close()
        await engine.dispose()


async def test_retries_are_bounded(sqlite_file: Path) -> None:
    path = sqlite_file
    engine = create_engine(f"sqlite+aiosqlite:///{path}", busy_timeout_s=0)
    ledger = Ledger(engine, retry=RetryPolicy(3, 0.001))
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(LedgerBusyError) as caught:
            await ledger.reserve(req())
        assert caught.value.attempts == 3
        assert "locked" in str(caught.value.original)
        other.execute("ROLLBACK")
        assert await ledger.active_jobs() == ()  # nothing half-written
    finally:
        other.close()
        await engine.dispose()


async def test_a_statement_is_one_trip_to_the_connections_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`sqlite_driver.py`: a statement (its rows read, its cursor closed) is one trip to
    aiosqlite's thread, an executemany too; SQLAlchemy's own adapter made three or four, each
    waiting for the event loop. BEGIN rides with the next statement, and a transaction SQLite
    does not hold ends without a trip. The trips are counted on aiosqlite's own dispatch."""
    import aiosqlite

    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'trips.db'}")
    real = aiosqlite.Connection._execute
    trips = 0

    async def counted(self: aiosqlite.Connection, fn: Any, *args: object, **kw: object) -> object:
        nonlocal trips
        trips += 1
        return await real(self, fn, *args, **kw)  # type: ignore[arg-type]

    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (a INTEGER)"))  # BEGIN is behind us
            monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
            rows = (await conn.execute(text("SELECT 1 UNION ALL SELECT 2"))).all()
            assert rows == [(1,), (2,)] and trips == 1
            await conn.execute(text("INSERT INTO t VALUES (:a)"), [{"a": 1}, {"a": 2}])
            assert trips == 2
            assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar() == 2
            assert trips == 3
        # A write transaction: its BEGIN IMMEDIATE goes in its first statement's trip, and
        # takes the lock there (another writer is refused until the COMMIT, its own trip).
        assert trips == 4  # the COMMIT
        other = sqlite3.connect(tmp_path / "trips.db", timeout=0)
        async with writer(engine).begin() as conn:
            await conn.execute(text("INSERT INTO t VALUES (3)"))
            assert trips == 5
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
        assert trips == 6
        assert other.execute("SELECT count(*) FROM t").fetchone() == (3,)
        other.close()
        # A read on its own holds no transaction: it ends without a trip.
        async with reader(engine).begin() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar() == 3
        assert trips == 7
    finally:
        await engine.dispose()
