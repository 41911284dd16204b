"""Which database this is, remembered outside it, so that a lost database is never silently
replaced by an empty one.

Migration 0003 gives every database a random identity (`database_identity`). The first start
on a configuration writes that identity to a small file in the state folder (the marker,
`config.database-id` for `config.toml`; versions before `[paths] state_dir` wrote it beside
the configuration file, and it is still read there). Every later start compares: an empty
database where the marker names one means the database was deleted or `[database] url`
changed, and a different identity means another database (a copy from elsewhere, a wrong
URL); both stop start-up with one line, before anything is created or written, until the
operator restores the database or deletes the marker to start afresh on purpose. Without
this, a deleted SQLite file comes back empty at the next start: quotas, blocks and the audit
log gone, and job ids starting again at 1.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import inspect, select
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from .database import create_engine, safe_url
from .errors import LedgerError
from .models import DatabaseIdentity

__all__ = [
    "DatabaseMarker",
    "DatabaseMismatch",
    "DatabaseState",
    "MarkerUnwritable",
    "inspect_database",
    "marker_name",
]

#: The marker's name for `config.toml`: `config.database-id`.
MARKER_SUFFIX = ".database-id"


def marker_name(config_path: Path) -> str:
    """The marker's file name for a configuration file (one per configuration)."""
    return config_path.stem + MARKER_SUFFIX


class DatabaseMismatch(LedgerError):
    """The configured database is not the one this configuration used before."""


class MarkerUnwritable(LedgerError):
    """The marker cannot be written in the state folder (read-only, full, not ours)."""


@dataclass(frozen=True, slots=True)
class DatabaseState:
    """What a database holds before the bot touches it."""

    empty: bool  # no schema at all (a missing SQLite file counts as empty)
    identity: str | None  # None when empty, or made before identities existed
    created_at: datetime | None = None


def _missing_or_empty(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except FileNotFoundError:
        return True


async def inspect_database(url: str) -> DatabaseState:
    """Read the database's identity without creating or changing anything (a SQLite file
    that does not exist is not created)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        name = parsed.database or ""
        if name in ("", ":memory:"):
            return DatabaseState(empty=True, identity=None)
        if _missing_or_empty(Path(name)):
            return DatabaseState(empty=True, identity=None)
    engine = create_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            tables = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
            if "alembic_version" not in tables:
                return DatabaseState(empty=True, identity=None)
            if DatabaseIdentity.__tablename__ not in tables:
                return DatabaseState(empty=False, identity=None)
            query = select(DatabaseIdentity.id, DatabaseIdentity.created_at)
            row = (await conn.execute(query)).first()
    finally:
        await engine.dispose()
    if row is None:
        return DatabaseState(empty=False, identity=None)
    return DatabaseState(empty=False, identity=row.id, created_at=row.created_at)


@dataclass(frozen=True, slots=True)
class DatabaseMarker:
    """The file in the state folder that names the database a configuration used.

    `earlier` is where versions before the state folder wrote it, beside the configuration
    file: read when `path` does not exist yet, never written, so an install that moves its
    state never takes a new empty database for its own."""

    path: Path
    earlier: Path | None = None

    @classmethod
    def of(cls, config_path: Path, state_dir: Path) -> DatabaseMarker:
        path = state_dir / marker_name(config_path)
        earlier = config_path.with_name(marker_name(config_path))
        return cls(path, None if earlier.resolve() == path.resolve() else earlier)

    def _read(self) -> tuple[str | None, Path]:
        """The remembered identity and the file it came from (None: no marker at all)."""
        for path in (self.path, self.earlier):
            if path is None:
                continue
            try:
                data = tomllib.loads(path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                continue
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
                raise DatabaseMismatch(
                    f"cannot read {path} ({exc}); delete it if the configured database is the "
                    "right one"
                ) from None
            found = data.get("database_id")
            if not isinstance(found, str) or not found:
                raise DatabaseMismatch(
                    f"{path} names no database_id; delete it if the configured database is "
                    "the right one"
                )
            return found, path
        return None, self.path

    def remembered(self) -> str | None:
        """The identity written at the first start, or None (no marker yet)."""
        return self._read()[0]

    def refuse_empty(self, url: str) -> None:
        """Before the schema is made: an empty database where one existed stops start-up."""
        remembered, source = self._read()
        if remembered is None:
            return
        if source != self.path:  # an earlier version's marker: the state folder is new
            raise DatabaseMismatch(
                f"the database {safe_url(url)} is empty, but this configuration used database "
                f"{remembered} (named in {source}, where earlier versions kept the bot's "
                f"state). The state folder is now {self.path.parent}: move the database "
                f"there, or set [paths] state_dir = {json.dumps(str(source.parent))}; to start "
                f"afresh on purpose, delete {source}"
            )
        raise DatabaseMismatch(
            f"the database {safe_url(url)} is empty, but this configuration used database "
            f"{remembered} (named in {source}): it was deleted, or [database] url "
            f"changed. Restore it, or delete {source} to start afresh with an empty "
            "database (quotas, blocks and history start over)"
        )

    def problem(self, url: str, state: DatabaseState) -> str | None:
        """Why `refuse_empty` or `check` would stop start-up, without writing anything."""
        try:
            if state.empty:
                self.refuse_empty(url)
                return None
            remembered, source = self._read()
        except DatabaseMismatch as exc:
            return str(exc)
        if remembered is None or state.identity in (None, remembered):
            return None
        return self._other(url, state, remembered, source)

    @staticmethod
    def _other(url: str, state: DatabaseState, remembered: str, source: Path) -> str:
        return (
            f"the database {safe_url(url)} is database {state.identity}, but this "
            f"configuration used database {remembered} (named in {source}). Check "
            f"[database] url; if you moved to this database on purpose, delete {source}"
        )

    def check(self, url: str, state: DatabaseState) -> bool:
        """After migrating: the database must be the remembered one. Remembers it in the state
        folder on the first start, and when only an earlier version's marker named it (True
        when the marker was written now)."""
        if state.identity is None:  # made before identities: nothing to compare yet
            raise DatabaseMismatch(f"the database {safe_url(url)} has no identity row")
        remembered, source = self._read()
        if remembered is not None and remembered != state.identity:
            raise DatabaseMismatch(self._other(url, state, remembered, source))
        if remembered is not None and source == self.path:
            return False
        text = (
            "# imagine-bot: the database this configuration uses. Delete this file only\n"
            "# to start on purpose with another (or an empty) database.\n"
            f"database_id = {json.dumps(state.identity)}\n"
            f"url = {json.dumps(safe_url(url))}\n"
        )
        try:
            self.path.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise MarkerUnwritable(
                f"cannot write {self.path} ({exc.strerror}): the state folder "
                f"{self.path.parent} must be writable by this user"
            ) from None
        return True
