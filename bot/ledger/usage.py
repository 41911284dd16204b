"""Moderator usage reports (`/usage [days]`): read-only aggregate queries over `jobs`.

"Images" here are the images that count against quotas (jobs queued, running or done), so
the report agrees with what users are charged. Days are UTC calendar days.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Date, case, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from .allowances import statuses
from .jobs import COUNTED_STATUSES, JobKind, JobStatus, RefusalReason
from .models import Job

__all__ = [
    "DayUsage",
    "KindUsage",
    "RefusalCount",
    "UsageSummary",
    "UserDayUsage",
    "UserUsage",
    "period_start",
    "summarize",
]


@dataclass(frozen=True, slots=True)
class UserUsage:
    user_id: int
    images: int  # images counted against the quota in the period
    jobs: int  # jobs that counted (queued, running, done)
    failed: int  # failed or cancelled jobs (their images were given back)
    refused: int


@dataclass(frozen=True, slots=True)
class DayUsage:
    day: date
    images: int
    jobs: int
    users: int  # distinct users with counted jobs that day


@dataclass(frozen=True, slots=True)
class UserDayUsage:
    day: date
    user_id: int
    images: int
    jobs: int


@dataclass(frozen=True, slots=True)
class KindUsage:
    """Counted images and jobs of one kind (an upscale's images are its cost)."""

    kind: JobKind | str
    images: int
    jobs: int


@dataclass(frozen=True, slots=True)
class RefusalCount:
    reason: RefusalReason | str
    count: int


@dataclass(frozen=True, slots=True)
class UsageSummary:
    """A guild's usage from `since` (midnight UTC) to `until`."""

    guild_id: int
    since: datetime
    until: datetime
    days: tuple[DayUsage, ...]  # oldest first; days without jobs are left out
    users: tuple[UserUsage, ...]  # most images first
    user_days: tuple[UserDayUsage, ...]  # by day, then most images first
    refusals: tuple[RefusalCount, ...]  # most frequent first
    kinds: tuple[KindUsage, ...] = ()  # imagine, upscale, variation: most images first

    @property
    def total_images(self) -> int:
        return sum(u.images for u in self.users)

    @property
    def total_jobs(self) -> int:
        return sum(u.jobs for u in self.users)

    @property
    def total_refusals(self) -> int:
        return sum(r.count for r in self.refusals)

    def top_users(self, n: int = 10) -> tuple[UserUsage, ...]:
        """The `n` users with the most images (ties: lowest id first)."""
        return tuple(u for u in self.users if u.images > 0)[:n]


def period_start(now: datetime, days: int) -> datetime:
    """Midnight UTC `days - 1` days before `now`'s day: `days=1` means today so far."""
    if days < 1:
        raise ValueError("days must be at least 1")
    first = now.astimezone(UTC).date() - timedelta(days=days - 1)
    return datetime.combine(first, time(), tzinfo=UTC)


class utc_day(FunctionElement[date]):
    """The UTC calendar day of a UTC timestamp column, on SQLite and PostgreSQL."""

    type = Date()
    inherit_cache = True


@compiles(utc_day, "sqlite")
def _utc_day_sqlite(element: utc_day, compiler: SQLCompiler, **kw: Any) -> str:
    # Stored as naive UTC text ("YYYY-MM-DD HH:MM:SS.ffffff"): date() takes the day part.
    return f"date({compiler.process(element.clauses, **kw)})"


@compiles(utc_day)
def _utc_day_default(element: utc_day, compiler: SQLCompiler, **kw: Any) -> str:
    return f"CAST(({compiler.process(element.clauses, **kw)} AT TIME ZONE 'UTC') AS DATE)"


def _reason(value: str) -> RefusalReason | str:
    try:
        return RefusalReason(value)
    except ValueError:
        return value


async def summarize(
    session: AsyncSession, guild_id: int, since: datetime, until: datetime
) -> UsageSummary:
    """Aggregate one guild's jobs queued in [since, until)."""
    in_period = (Job.guild_id == guild_id, Job.queued_at >= since, Job.queued_at < until)
    counted = Job.status.in_(statuses(COUNTED_STATUSES))
    lost = Job.status.in_(statuses((JobStatus.FAILED, JobStatus.CANCELLED)))
    images = func.coalesce(func.sum(case((counted, Job.image_count), else_=0)), 0)
    jobs = func.count(case((counted, 1)))

    user_rows = await session.execute(
        select(
            Job.user_id,
            images,
            jobs,
            func.count(case((lost, 1))),
            func.count(case((Job.status == str(JobStatus.REFUSED), 1))),
        )
        .where(*in_period)
        .group_by(Job.user_id)
        .order_by(images.desc(), Job.user_id)
    )
    users = tuple(UserUsage(*row) for row in user_rows)

    day = utc_day(Job.queued_at)
    day_rows = await session.execute(
        select(day, Job.user_id, images, jobs)
        .where(*in_period, counted)
        .group_by(day, Job.user_id)
        .order_by(day, images.desc(), Job.user_id)
    )
    user_days = tuple(UserDayUsage(*row) for row in day_rows)

    totals: dict[date, list[int]] = {}
    for ud in user_days:
        t = totals.setdefault(ud.day, [0, 0, 0])
        t[0] += ud.images
        t[1] += ud.jobs
        t[2] += 1
    days = tuple(DayUsage(d, *t) for d, t in sorted(totals.items()))

    reason_count = func.count()
    refusal_rows = await session.execute(
        select(Job.refusal_reason, reason_count)
        .where(*in_period, Job.status == str(JobStatus.REFUSED))
        .group_by(Job.refusal_reason)
        .order_by(reason_count.desc(), Job.refusal_reason)
    )
    refusals = tuple(RefusalCount(_reason(r), n) for r, n in refusal_rows)

    kind_rows = await session.execute(
        select(Job.kind, images, jobs)
        .where(*in_period, counted)
        .group_by(Job.kind)
        .order_by(images.desc(), Job.kind)
    )
    kinds = tuple(KindUsage(_kind(k), n, j) for k, n, j in kind_rows)

    return UsageSummary(guild_id, since, until, days, users, user_days, refusals, kinds)


def _kind(value: str) -> JobKind | str:
    try:
        return JobKind(value)
    except ValueError:
        return value
