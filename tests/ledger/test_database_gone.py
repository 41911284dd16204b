"""A SQLite file deleted or replaced under the running bot is noticed, not written into."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from bot.errors import describe
from bot.ledger import DatabaseGone, DatabaseUnavailable, Ledger, QuotaPolicy, create_engine

from .conftest import make_request


@pytest.mark.parametrize("how", ["deleted", "replaced"])
async def test_a_vanished_database_file_stops_reads_and_writes(
    sqlite_template: Path, tmp_path: Path, how: str
) -> None:
    path = tmp_path / "imagine.db"
    shutil.copyfile(sqlite_template, path)
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    try:
        ledger = Ledger(engine, QuotaPolicy(daily_images=10))
        assert await ledger.ping()
        assert (await ledger.reserve(make_request())).accepted
        path.unlink()  # an operator's `rm`, or a restore from backup:
        if how == "replaced":
            shutil.copyfile(sqlite_template, path)  # a fresh file at the same path
        with pytest.raises(DatabaseGone, match="deleted or replaced"):
            await ledger.ping()  # /healthz says the database is down
        with pytest.raises(DatabaseGone):
            await ledger.reserve(make_request())  # nothing is reserved into a lost file
        message = describe(DatabaseGone(str(path))).text
        assert "nothing was charged" in message and str(path) not in message
    finally:
        await engine.dispose()


async def test_a_database_that_refuses_writes_is_a_clear_ledger_error(
    sqlite_template: Path, tmp_path: Path
) -> None:
    """A read-only or full database: SQLite's own error, turned into one the bot explains
    ("nothing was charged") instead of an unexpected crash; reads still work."""
    path = tmp_path / "imagine.db"
    shutil.copyfile(sqlite_template, path)
    engine = create_engine(f"sqlite+aiosqlite:///{path}")

    @event.listens_for(engine.sync_engine, "connect")
    def read_only(connection: Any, record: Any) -> None:  # as on a read-only mount
        connection.execute("PRAGMA query_only = ON")

    try:
        ledger = Ledger(engine, QuotaPolicy(daily_images=10))
        with pytest.raises(DatabaseUnavailable, match="readonly") as refused:
            await ledger.reserve(make_request())
        assert "nothing was charged" in describe(refused.value).text
        assert (await ledger.user_status(1, 2)).used == 0  # reading still works
    finally:
        await engine.dispose()
