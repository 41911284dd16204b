"""A real PostgreSQL for tests: the server from $IMAGINE_BOT_TEST_PG_URL (`.ci/run` starts
one with tests/pg/start_postgres.sh), with a fresh database per test that wants one."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import asyncpg
from sqlalchemy.engine import make_url

__all__ = ["PG_ENV", "PG_SKIP", "PgServer"]

PG_ENV = "IMAGINE_BOT_TEST_PG_URL"
PG_SKIP = f'${PG_ENV} is not set: start a server with `eval "$(bash tests/pg/start_postgres.sh)"`'


def _asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _with_database(url: str, name: str) -> str:
    return make_url(url).set(database=name).render_as_string(hide_password=False)


async def _admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(_asyncpg_dsn(url))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@dataclass
class PgServer:
    """The server at `url`; tests get databases of their own on it, dropped at the end."""

    url: str
    created: list[str] = field(default_factory=list)

    @classmethod
    @contextlib.contextmanager
    def session(cls, url: str) -> Iterator[PgServer]:
        server = cls(url)
        try:
            yield server
        finally:
            for name in server.created:
                asyncio.run(_admin(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def new_database(self) -> str:
        """A new, empty database's URL (from synchronous code)."""
        return asyncio.run(self.create_database())

    async def create_database(self) -> str:
        """A new, empty database's URL (from a running event loop)."""
        name = f"ledger_test_{uuid.uuid4().hex[:12]}"
        await _admin(self.url, f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return _with_database(self.url, name)
