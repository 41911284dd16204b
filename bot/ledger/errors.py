"""The ledger's one exception base; foreign database errors are wrapped, keeping `.original`."""

from __future__ import annotations

__all__ = [
    "DatabaseGone",
    "DatabaseUnavailable",
    "LedgerBusyError",
    "LedgerError",
    "SchemaTooNew",
]


class LedgerError(Exception):
    """Base of every error the ledger raises on purpose."""


class LedgerBusyError(LedgerError):
    """The database stayed locked by another writer through every retry.

    Raised instead of SQLAlchemy's `OperationalError` so callers catch one package's errors;
    the driver's error is kept as `.original`.
    """

    def __init__(self, attempts: int, original: BaseException) -> None:
        super().__init__(f"database still locked after {attempts} attempts: {original}")
        self.attempts = attempts
        self.original = original


class SchemaTooNew(LedgerError):
    """The database was migrated by a newer imagine-bot: this one must not write to it."""

    def __init__(self, revision: str) -> None:
        super().__init__(
            f"this database's schema (revision {revision}) is newer than this imagine-bot "
            "knows: upgrade imagine-bot, or point [database] url at another database"
        )
        self.revision = revision


class DatabaseGone(LedgerError):
    """The SQLite file was deleted or replaced while the bot had it open."""

    def __init__(self, path: str) -> None:
        super().__init__(f"the database file {path} was deleted or replaced while in use")
        self.path = path


class DatabaseUnavailable(LedgerError):
    """The database refused the work (full disk, read-only file, lost connection); the
    driver's error is kept as `.original`."""

    def __init__(self, original: BaseException) -> None:
        reason = str(getattr(original, "orig", None) or original).strip().splitlines()
        super().__init__(f"the database refused the work: {reason[0] if reason else original!r}")
        self.original = original
