"""Ledger fixtures: every test runs on a real SQLite file and, when
$IMAGINE_BOT_TEST_PG_URL is set, on a real PostgreSQL database too. Schemas are made by the
Alembic migrations, never by `create_all`.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.ledger import Ledger, QuotaPolicy, create_engine, upgrade_to_head
from testkit import jobs
from testkit.pg import PgServer

BACKENDS = ["sqlite", "postgresql"]

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
GUILD, USER = jobs.GUILD, jobs.USER  # `make_request`'s
OTHER_GUILD = 1_100_000_000_000_000_002
OTHER_USER = 2_200_000_000_000_000_002
MODERATOR = 3_300_000_000_000_000_001


class FakeClock:
    """The ledger's clock, moved by tests instead of sleeping."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


make_request = jobs.job_request


@pytest.fixture(scope="session")
def migrated_pg(pg_server: PgServer) -> str:
    """One migrated PostgreSQL database for the session; `ledger` empties it per test."""
    url = pg_server.new_database()
    asyncio.run(upgrade_to_head(url))
    return url


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test (cheaper than migrating each time)."""
    path = tmp_path_factory.mktemp("template") / "ledger.db"
    asyncio.run(upgrade_to_head(f"sqlite+aiosqlite:///{path}"))
    return path


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated database holding no rows."""
    if backend == "postgresql":
        return str(request.getfixturevalue("migrated_pg"))
    path = tmp_path / "ledger.db"
    shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture
def empty_db_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database with no schema at all, for migration tests."""
    if backend == "postgresql":
        return request.getfixturevalue("pg_server").new_database()
    return f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def db_engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(db_url)
    if eng.dialect.name == "postgresql":
        async with eng.begin() as conn:
            tables = "jobs, quota_overrides, quota_audit, leases, guild_settings, settings_audit"
            await conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    yield eng
    await eng.dispose()


LedgerFactory = Callable[..., Ledger]


@pytest.fixture
def make_ledger(db_engine: AsyncEngine, clock: FakeClock) -> LedgerFactory:
    """Ledgers on the test's database and clock, with any policy (default: generous)."""

    def make(policy: QuotaPolicy | None = None, **kwargs: Any) -> Ledger:
        return Ledger(db_engine, policy or QuotaPolicy(daily_images=10), clock=clock, **kwargs)

    return make


@pytest.fixture
def ledger(make_ledger: LedgerFactory) -> Ledger:
    return make_ledger()
