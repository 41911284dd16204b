"""A SQLite file deleted or replaced under the running bot is noticed, not written into."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bot.errors import describe
from bot.ledger import DatabaseGone, Ledger, QuotaPolicy, create_engine

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
