"""Alembic environment (async template) for the ledger.

The URL comes from `-x url=...`, else the bot's own lookup (`bot.ledger.database.database_url`:
$IMAGINE_BOT_DATABASE_URL, then `[database] url` in the config file named by `-x config=...`
or $IMAGINE_BOT_CONFIG, default config.toml). When the caller hands over a connection in
`config.attributes["connection"]` (as `upgrade_to_head` does), it is used as is.
"""

from __future__ import annotations

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection
from sqlalchemy.pool import NullPool

from bot.ledger.database import create_engine, database_url, writer
from bot.ledger.models import Base

config = context.config

if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name)

target_metadata = Base.metadata


def _url() -> str:
    x = context.get_x_argument(as_dictionary=True)
    return database_url(
        x.get("url") or config.get_main_option("sqlalchemy.url"),
        config_path=x.get("config"),
    )


def _configure(**kwargs: object) -> None:
    context.configure(
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite alters tables by copying them; harmless elsewhere
        compare_type=True,
        **kwargs,
    )


def run_migrations_offline() -> None:
    """Emit SQL to stdout (`alembic upgrade head --sql`) without a database."""
    _configure(url=_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    # Our SQLite engine emits BEGIN itself, so DDL there is transactional too.
    _configure(connection=connection, transactional_ddl=True)
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    # foreign_keys off: SQLite cannot switch it inside the migration's transaction.
    engine = create_engine(_url(), foreign_keys=False, poolclass=NullPool)
    try:
        async with writer(engine).connect() as connection:
            await connection.run_sync(do_run_migrations)
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        asyncio.run(run_async_migrations())
    else:
        do_run_migrations(connection)


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
