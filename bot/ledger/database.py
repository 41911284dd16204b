"""Engines, sessions and migrations for the ledger, on SQLite (default) or PostgreSQL.

SQLite needs care to be a safe multi-writer store: every connection gets a rollback journal,
foreign keys and a busy timeout, and SQLAlchemy (not the sqlite3 driver) emits BEGIN, so that
writers can ask for `BEGIN IMMEDIATE` and serialize instead of failing on a read-to-write lock
upgrade (SQLAlchemy's documented recipe for pysqlite/aiosqlite transactions).

Why not WAL: WAL memory-maps the `-shm` file, and a file that changes under the map (made
read-only or immutable, truncated, on a full disk) kills the process with SIGBUS, with no log
line; and on an immutable database file WAL keeps "committing" into the `-wal` file that can
never be checkpointed, so the bot would believe writes that are not in the database. The
rollback journal maps nothing: the same faults are ordinary errors ("disk I/O error", "attempt
to write a readonly database") that the ledger turns into `DatabaseUnavailable`. A ledger
writes a few short rows per job, so WAL's speed is not needed.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.ext.asyncio import create_async_engine as _create_async_engine
from sqlalchemy.pool import NullPool

from .errors import LedgerError, SchemaTooNew
from .sqlite_driver import one_trip_dbapi

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_DATABASE_URL",
    "MIGRATIONS_DIR",
    "URL_ENV",
    "alembic_config",
    "create_engine",
    "database_url",
    "is_sqlite",
    "make_sessionmaker",
    "reader",
    "upgrade_to_head",
    "writer",
]

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///imagine-bot.db"
URL_ENV = "IMAGINE_BOT_DATABASE_URL"
CONFIG_ENV = "IMAGINE_BOT_CONFIG"
DEFAULT_CONFIG_PATH = "config.toml"
MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"

#: Execution option read by the SQLite `begin` hook: the BEGIN flavour to emit.
_BEGIN_OPTION = "ledger_sqlite_begin"
#: Its value for no BEGIN at all (`reader`).
_NO_BEGIN = "none"


def database_url(
    url: str | None = None,
    *,
    config_path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> str:
    """The database URL, shared by the bot and `migrations/env.py` so both open the same DB.

    Looks in order at: `url`; `$IMAGINE_BOT_DATABASE_URL`; `[database] url` in the TOML file
    at `config_path`, else `$IMAGINE_BOT_CONFIG`, else `config.toml` (which may be absent);
    finally the default SQLite file. A config file named explicitly must exist.
    """
    env = os.environ if environ is None else environ
    if url:
        return url
    if env.get(URL_ENV):
        return env[URL_ENV]
    explicit = config_path or env.get(CONFIG_ENV)
    path = Path(explicit or DEFAULT_CONFIG_PATH)
    if not path.is_file():
        if explicit:
            raise LedgerError(f"config file {path} not found")
        return DEFAULT_DATABASE_URL
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise LedgerError(f"cannot read {path}: {exc}") from exc
    found = data.get("database", {}).get("url")
    if found is not None and not isinstance(found, str):
        raise LedgerError(f"{path}: [database] url must be a string")
    return found or DEFAULT_DATABASE_URL


def is_sqlite(engine_or_url: AsyncEngine | str) -> bool:
    url = engine_or_url.url if isinstance(engine_or_url, AsyncEngine) else make_url(engine_or_url)
    return url.get_backend_name() == "sqlite"


def create_engine(
    url: str,
    *,
    busy_timeout_s: float = 5.0,
    foreign_keys: bool = True,
    **kwargs: Any,
) -> AsyncEngine:
    """An async engine set up for the ledger (extra `kwargs` go to `create_async_engine`).

    On SQLite (aiosqlite) each statement is one trip to the connection's thread
    (`sqlite_driver.py`), and every new connection gets a rollback journal (see the module
    docstring: never WAL), `foreign_keys`, and a busy timeout so a writer waits for another
    instead of failing at once. Migrations pass
    `foreign_keys=False` (the pragma cannot change inside their transaction, and SQLite's
    table-rebuild migrations need it off).
    """
    if not is_sqlite(url):
        kwargs.setdefault("pool_pre_ping", True)
        return _create_async_engine(url, **kwargs)
    if make_url(url).get_driver_name() == "aiosqlite":
        kwargs.setdefault("module", one_trip_dbapi())  # one trip per statement, not four

    engine = _create_async_engine(url, **kwargs)
    timeout_ms = max(0, round(busy_timeout_s * 1000))

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Stop the driver's own implicit BEGIN; `_on_begin` emits ours.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {timeout_ms}")
            # Also turns a database made by an older version (which used WAL) back.
            cursor.execute("PRAGMA journal_mode = DELETE")
            cursor.execute("PRAGMA synchronous = FULL")  # a commit survives a power cut
            cursor.execute(f"PRAGMA foreign_keys = {'ON' if foreign_keys else 'OFF'}")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get(_BEGIN_OPTION, "DEFERRED")
        if mode != _NO_BEGIN:
            conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def reader(engine: AsyncEngine) -> AsyncEngine:
    """The same engine (same pool) whose transactions on SQLite emit no BEGIN: each
    statement reads on its own (the driver's autocommit), holding SQLite's shared lock only
    while it runs, not from the first statement to the end of the transaction. A read
    transaction spans several trips through the event loop, and while it held the lock the
    writer's commit (which waits for every reader with a rollback journal) waited for the
    loop too: under a burst, every write behind it. A no-op elsewhere."""
    return engine.execution_options(**{_BEGIN_OPTION: _NO_BEGIN})


def writer(engine: AsyncEngine) -> AsyncEngine:
    """The same engine (same pool) whose transactions take SQLite's write lock up front.

    `BEGIN IMMEDIATE` makes concurrent writers queue on the busy timeout at BEGIN, rather
    than fail with "database is locked" when a read transaction later tries to write.
    A no-op elsewhere.
    """
    return engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})


def safe_url(url: str) -> str:
    """The URL as it may be logged and shown: the password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "(unparsable URL)"


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions whose objects stay readable after commit (no lazy reloads in async code)."""
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str | None = None) -> Config:
    """An Alembic config for `migrations/` that needs no alembic.ini (for programmatic use)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["configure_logger"] = False  # leave the bot's logging alone
    return cfg


def _upgrade(connection: Connection, cfg: Config, revision: str) -> None:
    known = {script.revision for script in ScriptDirectory.from_config(cfg).walk_revisions()}
    for current in MigrationContext.configure(connection).get_current_heads():
        if current not in known:  # Alembic would only say it "can't locate revision"
            raise SchemaTooNew(current)
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, revision)


def _status(connection: Connection, cfg: Config) -> str:
    script = ScriptDirectory.from_config(cfg)
    known = {s.revision for s in script.walk_revisions()}
    heads = set(MigrationContext.configure(connection).get_current_heads())
    for current in heads - known:
        raise SchemaTooNew(current)
    return "current" if heads == set(script.get_heads()) else "behind"


async def schema_status(url: str) -> str:
    """ "current" (at this version's head) or "behind" (upgraded at the next start), without
    changing anything; `SchemaTooNew` for a schema a newer version made. Only for a database
    that exists (connecting to a missing SQLite file would create it)."""
    engine = create_engine(url, foreign_keys=False, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(_status, alembic_config(url))
    finally:
        await engine.dispose()


async def upgrade_to_head(url: str, *, revision: str = "head") -> None:
    """Bring the database at `url` up to `revision`; safe to call at every start-up.

    Runs Alembic on a connection of our own engine through `run_sync` (Alembic's cookbook
    "connection sharing with asyncio"), so it works inside the bot's running event loop, and
    everything happens in one transaction (SQLite and PostgreSQL both have transactional DDL).
    """
    engine = create_engine(url, foreign_keys=False, poolclass=NullPool)
    try:
        async with writer(engine).begin() as conn:
            await conn.run_sync(_upgrade, alembic_config(url), revision)
    finally:
        await engine.dispose()
