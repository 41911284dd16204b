"""Alembic migrations of the usage ledger (`bot.ledger.models`)."""
