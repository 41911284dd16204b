"""`Ledger`: the one owner of every write to the usage ledger; cogs call it, never SQL.

Every write runs in its own short transaction. Writes that read before they write (a
reservation checks the allowance, then inserts) are serialized per user: on SQLite by
`BEGIN IMMEDIATE` (one writer at a time, waiting on the busy timeout), on PostgreSQL by a
transaction-scoped advisory lock on (guild, user). A write that still finds SQLite locked
is retried a few times before `LedgerBusyError`.

Status changes are compare-and-set updates (`UPDATE ... WHERE status IN (allowed)`): an
illegal or repeated transition (or an unknown job id) changes nothing and returns False, so a
late or duplicate event can't corrupt a job: `mark_done` is true once per job, however many
callers race to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, delete, func, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from .database import create_engine, make_sessionmaker, upgrade_to_head, writer
from .errors import DatabaseGone, DatabaseUnavailable, LedgerBusyError
from .jobs import (
    ACTIVE_STATUSES,
    COUNTED_STATUSES,
    JobKind,
    JobRecord,
    JobRequest,
    JobStatus,
    RefusalReason,
    new_job_key,
)
from .lease import LeaseHolder
from .models import GuildSettingsRow, Job, Lease, QuotaAudit, QuotaOverride, SettingsAudit
from .quota import (
    WINDOW,
    CountedImages,
    QuotaChange,
    QuotaKind,
    QuotaPolicy,
    QuotaSetting,
    Reservation,
    UserStatus,
    available_at,
    images_used,
    next_increase,
)
from .settings import SETTINGS, GuildSettings, SettingsChange
from .settings import from_text as settings_value
from .settings import to_text as settings_text
from .shards import OWNER_LEASE, Shards
from .usage import UsageSummary, period_start, summarize

__all__ = ["Ledger", "RetryPolicy", "open_ledger", "utcnow"]

log = logging.getLogger(__name__)

T = TypeVar("T")
#: Characters of a prompt the ledger keeps (more than any accepted prompt has).
MAX_PROMPT_CHARS = 2000
#: Seconds the database may take to answer a health check before it counts as down.
PING_TIMEOUT = 3.0

#: Error texts are for moderators and logs, not for storing tracebacks.
MAX_ERROR_CHARS = 2000


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often a write that finds SQLite locked past its busy timeout is tried again."""

    attempts: int = 4
    first_delay_s: float = 0.05  # doubled after each failure

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")


def _is_locked(exc: OperationalError) -> bool:
    text = str(exc.orig).lower()
    return "database is locked" in text or "database table is locked" in text


def _lock_key(guild_id: int, user_id: int) -> int:
    """A stable signed 64-bit key for PostgreSQL's advisory lock on one user in one guild."""
    digest = hashlib.blake2b(
        f"imagine-bot:quota:{guild_id}:{user_id}".encode(), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big", signed=True)


def _status(value: str) -> JobStatus:
    return JobStatus(value)


def _reason(value: str | None) -> RefusalReason | str | None:
    if value is None:
        return None
    try:
        return RefusalReason(value)
    except ValueError:
        return value


_REQUEST_FIELDS = tuple(f.name for f in fields(JobRequest))
_RECORD_FIELDS = tuple(f.name for f in fields(JobRecord))


def _record(job: Job) -> JobRecord:
    """The frozen view of a row (every `JobRecord` field is a column of the same name)."""
    values = {name: getattr(job, name) for name in _RECORD_FIELDS}
    values |= {"status": _status(job.status), "refusal_reason": _reason(job.refusal_reason)}
    values["kind"] = JobKind(job.kind)
    return JobRecord(**values)


def _sqlite_file(engine: AsyncEngine) -> Path | None:
    name = engine.url.database
    if engine.dialect.name != "sqlite" or not name or name == ":memory:":
        return None
    return Path(name).resolve()


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return (stat.st_dev, stat.st_ino)


def _holder(row: Lease) -> LeaseHolder:
    return LeaseHolder(row.holder, row.host, row.pid, row.acquired_at, row.heartbeat_at)


def _statuses(statuses: Iterable[JobStatus]) -> list[str]:
    return sorted(str(s) for s in statuses)


def _error_text(error: str | None) -> str | None:
    return None if error is None else error[:MAX_ERROR_CHARS]


class Ledger:
    """Jobs, quotas and their audit log, on one engine.

    `policy` is the default for every guild; `guild_policies` overrides it per guild id.
    `clock` returns timezone-aware UTC now (tests pass a fake one).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        policy: QuotaPolicy | None = None,
        *,
        guild_policies: Mapping[int, QuotaPolicy] | None = None,
        clock: Callable[[], datetime] = utcnow,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.engine = engine
        self.policy = policy or QuotaPolicy()
        self._guild_policies = dict(guild_policies or {})
        self._clock = clock
        self._retry = retry or RetryPolicy()
        self._postgres = engine.dialect.name == "postgresql"
        self._file = _sqlite_file(engine)  # watched: a deleted or replaced file is noticed
        self._file_id = _file_id(self._file) if self._file is not None else None
        self._reads = make_sessionmaker(engine)
        self._writes = make_sessionmaker(writer(engine))
        # SQLite has one writer at a time anyway: queue this process's writers here, before
        # they check out a pooled connection, instead of in BEGIN IMMEDIATE's busy wait,
        # where each holds a connection that reads then wait for (measured by
        # bench/load_bench.py: first-answer p99 3.5 s -> under 0.1 s).
        self._write_lock: asyncio.Lock | None = None if self._postgres else asyncio.Lock()

    # -- plumbing -----------------------------------------------------------------------

    def now(self) -> datetime:
        return self._clock()

    def _check_file(self) -> None:
        """Raise `DatabaseGone` if the SQLite file was deleted or replaced while open: SQLite
        would go on writing into the deleted file, and every record would be lost."""
        if self._file is None or self._file_id is None:
            return
        if _file_id(self._file) != self._file_id:
            raise DatabaseGone(str(self._file))

    async def ping(self) -> bool:
        """Whether the database answers a query within `PING_TIMEOUT` seconds (health)."""
        self._check_file()

        async def query() -> None:
            async with self.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))

        await asyncio.wait_for(query(), PING_TIMEOUT)
        return True

    def policy_for(self, guild_id: int) -> QuotaPolicy:
        return self._guild_policies.get(guild_id, self.policy)

    async def _run(self, work: Callable[[AsyncSession], Awaitable[T]], *, write: bool) -> T:
        """Run `work` in one transaction, again from the start if SQLite stays locked."""
        self._check_file()
        sessions = self._writes if write else self._reads
        delay = self._retry.first_delay_s
        for attempt in range(1, self._retry.attempts + 1):
            try:
                async with contextlib.AsyncExitStack() as stack:
                    if write and self._write_lock is not None:
                        await stack.enter_async_context(self._write_lock)
                    session = await stack.enter_async_context(sessions())
                    await stack.enter_async_context(session.begin())
                    return await work(session)
            except OperationalError as exc:
                if not _is_locked(exc):  # full, read-only, unreachable: say so, in our terms
                    raise DatabaseUnavailable(exc) from exc
                if attempt == self._retry.attempts:
                    raise LedgerBusyError(attempt, exc) from exc
                log.warning("ledger: database locked (attempt %d), retrying: %s", attempt, exc)
                await asyncio.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    async def _lock_user(self, session: AsyncSession, guild_id: int, user_id: int) -> None:
        """Serialize writes about one user's quota (SQLite's BEGIN IMMEDIATE already does)."""
        if self._postgres:
            await session.execute(select(func.pg_advisory_xact_lock(_lock_key(guild_id, user_id))))

    async def _set_where(
        self,
        job_id: int,
        allowed: Iterable[JobStatus],
        values: dict[str, Any],
        *extra: ColumnElement[bool],
    ) -> bool:
        """Compare-and-set: update the job only if its status is in `allowed`."""
        stmt = (
            update(Job)
            .where(Job.id == job_id, Job.status.in_(_statuses(allowed)), *extra)
            .values(**values)
            .execution_options(synchronize_session=False)
        )

        async def work(session: AsyncSession) -> bool:
            result = await session.execute(stmt)
            return bool(result.rowcount == 1)  # type: ignore[attr-defined]

        return await self._run(work, write=True)

    # -- reservations -------------------------------------------------------------------

    async def reserve(self, request: JobRequest) -> Reservation:
        """Check the user's allowance and in-flight jobs and store the job, atomically.

        Accepted: the job is stored `queued` and its images count from now for 24 hours.
        Refused: it is stored `refused` with the reason (`user_blocked`, `quota` with
        `retry_at`, or `too_many_jobs` when `max_queued_per_user` jobs are queued or running)
        and takes no images. Raises ValueError for a request that can't be stored at all.
        """
        problems = request.problems()
        if problems:
            raise ValueError("; ".join(problems))

        async def work(session: AsyncSession) -> Reservation:
            await self._lock_user(session, request.guild_id, request.user_id)
            policy = await self._policy(session, request.guild_id)
            now = self._clock()
            setting = await self._setting(session, request.guild_id, request.user_id)
            limit = setting.limit(policy)
            reason: RefusalReason | None = None
            retry_at: datetime | None = None
            used = 0
            if setting.blocked:
                reason = RefusalReason.USER_BLOCKED
            else:
                if limit is not None:
                    counted = await self._counted(session, request.guild_id, request.user_id, now)
                    used = images_used(counted, now)
                    if used + request.image_count > limit:
                        reason = RefusalReason.QUOTA
                        retry_at = available_at(counted, limit, request.image_count, now)
                if reason is None:
                    active = await self._active_count(session, request.guild_id, request.user_id)
                    if active >= policy.max_queued_per_user:
                        reason = RefusalReason.TOO_MANY_JOBS
            job = self._new_job(request, now, reason, None)
            session.add(job)
            await session.flush()
            if limit is None:
                remaining = None
            else:
                remaining = max(0, limit - used - (request.image_count if reason is None else 0))
            return Reservation(_record(job), limit, remaining, retry_at)

        return await self._run(work, write=True)

    async def record_refusal(
        self, request: JobRequest, reason: RefusalReason | str, detail: str | None = None
    ) -> JobRecord:
        """Store a request the bot turned down before reserving (blocked word, channel...).

        It takes no images; `detail` is kept as the job's error text for moderators.
        """
        problems = request.problems()
        if problems:
            raise ValueError("; ".join(problems))

        async def work(session: AsyncSession) -> JobRecord:
            job = self._new_job(request, self._clock(), reason, detail)
            session.add(job)
            await session.flush()
            return _record(job)

        return await self._run(work, write=True)

    @staticmethod
    def _new_job(
        request: JobRequest, now: datetime, reason: RefusalReason | str | None, detail: str | None
    ) -> Job:
        refused = reason is not None
        values = {name: getattr(request, name) for name in _REQUEST_FIELDS}
        for field in ("prompt", "negative_prompt"):  # a forged 3 MB prompt is not kept whole
            values[field] = values[field][:MAX_PROMPT_CHARS]
        return Job(
            **values
            | {
                "key": new_job_key(),
                "kind": str(request.kind),
                "interaction_token": None if refused else request.interaction_token,
                "status": str(JobStatus.REFUSED if refused else JobStatus.QUEUED),
                "refusal_reason": None if reason is None else str(reason),
                "error": _error_text(detail),
                "queued_at": now,
                "finished_at": now if refused else None,
            }
        )

    # -- status transitions ---------------------------------------------------------------

    async def mark_running(self, job_id: int) -> bool:
        """queued → running. False (and no change) from any other status."""
        return await self._set_where(
            job_id,
            {JobStatus.QUEUED},
            {"status": str(JobStatus.RUNNING), "started_at": self._clock()},
        )

    async def mark_done(self, job_id: int, message_id: int | None = None) -> bool:
        """queued/running → done; the images stay counted and the token is forgotten.

        Pass `message_id` when the result is posted: it is recorded and the job is marked
        delivered too (see `bot/jobs/delivery.py` for how a post is made exactly once).
        """
        now = self._clock()
        values: dict[str, Any] = {
            "status": str(JobStatus.DONE),
            "finished_at": now,
            "interaction_token": None,
        }
        if message_id is not None:
            values |= {"message_id": message_id, "delivered_at": now}
        return await self._set_where(job_id, ACTIVE_STATUSES, values)

    async def start_delivery(self, job_id: int, *, unkept: str | None = None) -> bool:
        """Record that the result is about to be posted (queued/running jobs only).

        From then on a restart must look for the post before posting again; the mark stays
        when a dead process's job is re-queued. `unkept`: why its full-size images could not
        be kept (a full disk), kept as the job's error so a later Upscale or Vary press can
        say so (`JobRecord.unkept`).
        """
        values = {"delivery_started_at": self._clock(), "error": _error_text(unkept)}
        return await self._set_where(job_id, ACTIVE_STATUSES, values)

    async def mark_failed(self, job_id: int, error: str) -> bool:
        """queued/running → failed: the images are given back."""
        return await self._end(job_id, JobStatus.FAILED, error)

    async def mark_cancelled(self, job_id: int, error: str | None = None) -> bool:
        """queued/running → cancelled: the images are given back."""
        return await self._end(job_id, JobStatus.CANCELLED, error)

    async def refuse(
        self, job_id: int, reason: RefusalReason | str, detail: str | None = None
    ) -> bool:
        """queued → refused (e.g. the engine's queue was full): as if it never took images."""
        return await self._set_where(
            job_id,
            {JobStatus.QUEUED},
            {
                "status": str(JobStatus.REFUSED),
                "refusal_reason": str(reason),
                "error": _error_text(detail),
                "finished_at": self._clock(),
                "interaction_token": None,
            },
        )

    async def _end(self, job_id: int, status: JobStatus, error: str | None) -> bool:
        return await self._set_where(
            job_id,
            ACTIVE_STATUSES,
            {
                "status": str(status),
                "error": _error_text(error),
                "finished_at": self._clock(),
                "interaction_token": None,
            },
        )

    async def refund_images(self, job_id: int, images: int) -> bool:
        """Give back `images` of a done job that were never posted (moderation withheld them).

        The job then counts only the images it delivered, in the quota and in `/usage`.
        False (and no change) unless the job is done and has at least that many images.
        """
        if images < 1:
            raise ValueError("images must be at least 1")
        return await self._set_where(
            job_id,
            {JobStatus.DONE},
            {"image_count": Job.image_count - images},
            Job.image_count >= images,
        )

    async def set_message(self, job_id: int, message_id: int) -> bool:
        """Remember the progress/result message to edit later. False for an unknown job."""
        return await self._set_where(job_id, JobStatus, {"message_id": message_id})

    # -- restart recovery (see recovery.py) -------------------------------------------------

    async def requeue_interrupted(self, shards: Shards | None = None) -> tuple[JobRecord, ...]:
        """Put jobs left `running` by a dead process back to `queued`; list all queued jobs.

        Only the guilds of `shards` (default: every guild): another process owns the rest.
        Their rows, and so their reservations, are kept: nothing is counted twice.
        """
        mine = (shards or Shards()).clause(Job.guild_id)
        where = () if mine is None else (mine,)

        async def work(session: AsyncSession) -> tuple[JobRecord, ...]:
            await session.execute(
                update(Job)
                .where(Job.status == str(JobStatus.RUNNING), *where)
                .values(status=str(JobStatus.QUEUED), started_at=None)
                .execution_options(synchronize_session=False)
            )
            rows = await session.scalars(
                select(Job)
                .where(Job.status == str(JobStatus.QUEUED), *where)
                .order_by(Job.queued_at, Job.id)
            )
            return tuple(_record(j) for j in rows)

        return await self._run(work, write=True)

    async def forget_tokens(self, job_ids: Iterable[int]) -> int:
        """Drop interaction tokens that can no longer be used; returns how many were set."""
        ids = sorted(set(job_ids))
        if not ids:
            return 0

        async def work(session: AsyncSession) -> int:
            result = await session.execute(
                update(Job)
                .where(Job.id.in_(ids), Job.interaction_token.is_not(None))
                .values(interaction_token=None)
                .execution_options(synchronize_session=False)
            )
            return int(result.rowcount)  # type: ignore[attr-defined]

        return await self._run(work, write=True)

    # -- quota overrides ----------------------------------------------------------------------

    # -- ownership ------------------------------------------------------------------------

    async def leases(self) -> tuple[tuple[str, LeaseHolder], ...]:
        """Every lease row: its name (`Shards.lease_names`) and holder."""

        async def work(session: AsyncSession) -> tuple[tuple[str, LeaseHolder], ...]:
            rows = await session.scalars(select(Lease).order_by(Lease.name))
            return tuple((row.name, _holder(row)) for row in rows)

        return await self._run(work, write=False)

    async def claim_lease(
        self, me: LeaseHolder, stale: Callable[[LeaseHolder], bool], name: str = OWNER_LEASE
    ) -> LeaseHolder:
        """Make `me` the owner of lease `name` (the database, or a shard of it) unless a live
        process is (`stale` says which are gone); returns the owner after the attempt."""

        async def work(session: AsyncSession) -> LeaseHolder:
            row = await session.get(Lease, name)
            if row is not None and row.holder != me.holder and not stale(_holder(row)):
                return _holder(row)
            now = self._clock()
            values = {"holder": me.holder, "host": me.host, "pid": me.pid}
            if row is None:
                row = Lease(name=name, acquired_at=now, heartbeat_at=now, **values)
                session.add(row)
            else:
                for key, value in (values | {"acquired_at": now, "heartbeat_at": now}).items():
                    setattr(row, key, value)
            await session.flush()
            return _holder(row)

        try:
            return await self._run(work, write=True)
        except IntegrityError:  # another process inserted the row first (PostgreSQL)
            return await self._run(work, write=True)

    async def renew_lease(self, me: LeaseHolder, name: str = OWNER_LEASE) -> bool:
        """The owner's heartbeat; False if another process holds the lease now."""
        return await self._lease_write(
            update(Lease)
            .where(Lease.name == name, Lease.holder == me.holder)
            .values(heartbeat_at=self._clock())
        )

    async def release_lease(self, me: LeaseHolder, name: str = OWNER_LEASE) -> None:
        """Give the lease up (a clean stop), if `me` still holds it."""
        await self._lease_write(delete(Lease).where(Lease.name == name, Lease.holder == me.holder))

    async def _lease_write(self, stmt: Any) -> bool:
        async def work(session: AsyncSession) -> bool:
            result = await session.execute(stmt.execution_options(synchronize_session=False))
            return bool(result.rowcount)  # type: ignore[attr-defined]

        return await self._run(work, write=True)

    async def set_user_quota(
        self, guild_id: int, user_id: int, daily: int | None, *, by: int, reason: str | None = None
    ) -> QuotaChange:
        """Override a user's allowance: a number of images per 24 h, None for unlimited,
        0 to block. Audited with the moderator `by`."""
        if daily is not None and daily < 0:
            raise ValueError("daily must be None (unlimited) or 0 or more")
        new = (
            QuotaSetting(QuotaKind.UNLIMITED)
            if daily is None
            else QuotaSetting(QuotaKind.LIMITED, daily)
        )
        return await self._change_quota(guild_id, user_id, new, by, reason)

    async def block_user(
        self, guild_id: int, user_id: int, *, by: int, reason: str | None = None
    ) -> QuotaChange:
        """Set the user's allowance to 0: every request is refused as `user_blocked`."""
        return await self.set_user_quota(guild_id, user_id, 0, by=by, reason=reason)

    async def reset_user_quota(
        self, guild_id: int, user_id: int, *, by: int, reason: str | None = None
    ) -> QuotaChange:
        """Remove the override: the guild's default applies again."""
        return await self._change_quota(
            guild_id, user_id, QuotaSetting(QuotaKind.DEFAULT), by, reason
        )

    async def _change_quota(
        self, guild_id: int, user_id: int, new: QuotaSetting, by: int, reason: str | None
    ) -> QuotaChange:
        async def work(session: AsyncSession) -> QuotaChange:
            await self._lock_user(session, guild_id, user_id)
            now = self._clock()
            row = await session.get(QuotaOverride, (guild_id, user_id))
            old = QuotaSetting.from_override(
                None if row is None else row.daily_images, exists=row is not None
            )
            if new.kind is QuotaKind.DEFAULT:
                if row is not None:
                    await session.delete(row)
            elif row is None:
                session.add(
                    QuotaOverride(
                        guild_id=guild_id,
                        user_id=user_id,
                        daily_images=new.daily,
                        set_by=by,
                        set_at=now,
                        reason=reason,
                    )
                )
            else:
                row.daily_images, row.set_by, row.set_at, row.reason = new.daily, by, now, reason
            audit = QuotaAudit(
                guild_id=guild_id,
                user_id=user_id,
                moderator_id=by,
                changed_at=now,
                old_kind=str(old.kind),
                old_daily=old.daily,
                new_kind=str(new.kind),
                new_daily=new.daily,
                reason=reason,
            )
            session.add(audit)
            await session.flush()
            return _change(audit)

        return await self._run(work, write=True)

    # -- guild settings ---------------------------------------------------------------------

    async def guild_settings(self, guild_id: int) -> GuildSettings:
        """The guild's own settings (fields left None take the config's)."""

        async def work(session: AsyncSession) -> GuildSettings:
            return await self._guild_settings(session, guild_id)

        return await self._run(work, write=False)

    async def change_guild_setting(
        self, guild_id: int, name: str, value: Any, by: int
    ) -> SettingsChange:
        """Set (or, with None, reset to the config's) one setting of a guild, audited."""
        if name not in SETTINGS:
            raise ValueError(f"unknown setting {name!r}")

        async def work(session: AsyncSession) -> SettingsChange:
            now = self._clock()
            row = await session.get(GuildSettingsRow, guild_id)
            if row is None:
                row = GuildSettingsRow(guild_id=guild_id, updated_by=by, updated_at=now)
                session.add(row)
            stored = getattr(row, name)
            old = None if stored is None else str(stored)
            new = settings_text(value)
            setattr(row, name, value if name == "daily_images" else new)
            row.updated_by, row.updated_at = by, now
            session.add(
                SettingsAudit(
                    guild_id=guild_id,
                    moderator_id=by,
                    changed_at=now,
                    setting=name,
                    old_value=old,
                    new_value=new,
                )
            )
            return SettingsChange(guild_id, by, name, old, new)

        return await self._run(work, write=True)

    async def settings_history(
        self, guild_id: int, *, limit: int = 25
    ) -> tuple[SettingsChange, ...]:
        """The guild's settings changes, newest first."""
        stmt = (
            select(SettingsAudit)
            .where(SettingsAudit.guild_id == guild_id)
            .order_by(SettingsAudit.changed_at.desc(), SettingsAudit.id.desc())
            .limit(limit)
        )

        async def work(session: AsyncSession) -> tuple[SettingsChange, ...]:
            rows = (await session.execute(stmt)).scalars()
            return tuple(
                SettingsChange(r.guild_id, r.moderator_id, r.setting, r.old_value, r.new_value)
                for r in rows
            )

        return await self._run(work, write=False)

    @staticmethod
    async def _guild_settings(session: AsyncSession, guild_id: int) -> GuildSettings:
        row = await session.get(GuildSettingsRow, guild_id)
        if row is None:
            return GuildSettings()
        return GuildSettings(**{n: settings_value(n, getattr(row, n)) for n in SETTINGS})

    async def _policy(self, session: AsyncSession, guild_id: int) -> QuotaPolicy:
        """The guild's quota policy: its moderators' default allowance over the config's."""
        policy = self.policy_for(guild_id)
        daily = (await self._guild_settings(session, guild_id)).daily_images
        return policy if daily is None else dataclasses.replace(policy, daily_images=daily)

    async def quota_setting(self, guild_id: int, user_id: int) -> QuotaSetting:
        async def work(session: AsyncSession) -> QuotaSetting:
            return await self._setting(session, guild_id, user_id)

        return await self._run(work, write=False)

    async def quota_history(
        self, guild_id: int, user_id: int | None = None, *, limit: int = 25
    ) -> tuple[QuotaChange, ...]:
        """The guild's (or one user's) quota changes, newest first."""
        stmt = select(QuotaAudit).where(QuotaAudit.guild_id == guild_id)
        if user_id is not None:
            stmt = stmt.where(QuotaAudit.user_id == user_id)
        stmt = stmt.order_by(QuotaAudit.changed_at.desc(), QuotaAudit.id.desc()).limit(limit)

        async def work(session: AsyncSession) -> tuple[QuotaChange, ...]:
            return tuple(_change(a) for a in await session.scalars(stmt))

        return await self._run(work, write=False)

    # -- reads -----------------------------------------------------------------------------

    async def user_status(self, guild_id: int, user_id: int) -> UserStatus:
        """Allowance, images used in the last 24 h, when it refills, jobs in flight."""

        async def work(session: AsyncSession) -> UserStatus:
            now = self._clock()
            setting = await self._setting(session, guild_id, user_id)
            counted = await self._counted(session, guild_id, user_id, now)
            rows = await session.execute(
                select(Job.status, func.count())
                .where(
                    Job.guild_id == guild_id,
                    Job.user_id == user_id,
                    Job.status.in_(_statuses(ACTIVE_STATUSES)),
                )
                .group_by(Job.status)
            )
            by_status = {_status(s): n for s, n in rows}
            return UserStatus(
                guild_id=guild_id,
                user_id=user_id,
                setting=setting,
                limit=setting.limit(await self._policy(session, guild_id)),
                used=images_used(counted, now),
                queued=by_status.get(JobStatus.QUEUED, 0),
                running=by_status.get(JobStatus.RUNNING, 0),
                refills_at=next_increase(counted, now),
            )

        return await self._run(work, write=False)

    async def get_job(self, job_id: int) -> JobRecord | None:
        async def work(session: AsyncSession) -> JobRecord | None:
            job = await session.get(Job, job_id)
            return None if job is None else _record(job)

        return await self._run(work, write=False)

    async def jobs_for_user(
        self, guild_id: int, user_id: int, *, limit: int = 20
    ) -> tuple[JobRecord, ...]:
        """The user's most recent jobs in the guild, newest first."""
        stmt = (
            select(Job)
            .where(Job.guild_id == guild_id, Job.user_id == user_id)
            .order_by(Job.queued_at.desc(), Job.id.desc())
            .limit(limit)
        )
        return await self._records(stmt)

    async def active_jobs(self, guild_id: int | None = None) -> tuple[JobRecord, ...]:
        """Queued and running jobs, oldest first (all guilds unless one is given)."""
        stmt = select(Job).where(Job.status.in_(_statuses(ACTIVE_STATUSES)))
        if guild_id is not None:
            stmt = stmt.where(Job.guild_id == guild_id)
        return await self._records(stmt.order_by(Job.queued_at, Job.id))

    async def usage_summary(self, guild_id: int, days: int = 7) -> UsageSummary:
        """Usage for `/usage [days]`: from midnight UTC `days - 1` days ago until now."""
        now = self._clock()
        since = period_start(now, days)

        async def work(session: AsyncSession) -> UsageSummary:
            return await summarize(session, guild_id, since, now)

        return await self._run(work, write=False)

    async def _records(self, stmt: Any) -> tuple[JobRecord, ...]:
        async def work(session: AsyncSession) -> tuple[JobRecord, ...]:
            return tuple(_record(j) for j in await session.scalars(stmt))

        return await self._run(work, write=False)

    # -- queries shared by reads and writes ------------------------------------------------

    @staticmethod
    async def _setting(session: AsyncSession, guild_id: int, user_id: int) -> QuotaSetting:
        row = await session.get(QuotaOverride, (guild_id, user_id))
        return QuotaSetting.from_override(
            None if row is None else row.daily_images, exists=row is not None
        )

    @staticmethod
    async def _counted(
        session: AsyncSession, guild_id: int, user_id: int, now: datetime
    ) -> list[CountedImages]:
        rows = await session.execute(
            select(Job.queued_at, Job.image_count).where(
                Job.guild_id == guild_id,
                Job.user_id == user_id,
                Job.status.in_(_statuses(COUNTED_STATUSES)),
                Job.queued_at > now - WINDOW,
            )
        )
        return [CountedImages(t, n) for t, n in rows]

    @staticmethod
    async def _active_count(session: AsyncSession, guild_id: int, user_id: int) -> int:
        count = await session.scalar(
            select(func.count()).where(
                Job.guild_id == guild_id,
                Job.user_id == user_id,
                Job.status.in_(_statuses(ACTIVE_STATUSES)),
            )
        )
        return int(count or 0)


def _change(a: QuotaAudit) -> QuotaChange:
    return QuotaChange(
        id=a.id,
        guild_id=a.guild_id,
        user_id=a.user_id,
        moderator_id=a.moderator_id,
        changed_at=a.changed_at,
        old=QuotaSetting(QuotaKind(a.old_kind), a.old_daily),
        new=QuotaSetting(QuotaKind(a.new_kind), a.new_daily),
        reason=a.reason,
    )


@asynccontextmanager
async def open_ledger(
    url: str,
    policy: QuotaPolicy | None = None,
    *,
    guild_policies: Mapping[int, QuotaPolicy] | None = None,
    migrate: bool = True,
    busy_timeout_s: float = 5.0,
    clock: Callable[[], datetime] = utcnow,
) -> AsyncIterator[Ledger]:
    """Open the ledger for the bot's lifetime: migrate to head, then yield; dispose at exit."""
    if migrate:
        await upgrade_to_head(url)
    engine = create_engine(url, busy_timeout_s=busy_timeout_s)
    try:
        yield Ledger(engine, policy, guild_policies=guild_policies, clock=clock)
    finally:
        await engine.dispose()
