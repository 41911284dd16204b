"""Reads of jobs: one job, a user's history, the jobs in flight, and usage summaries.

Nothing here writes; a job's record is built as `transitions.record_of` builds it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from .allowances import statuses
from .jobs import ACTIVE_STATUSES, JobRecord
from .models import Job
from .transactions import Transactions
from .transitions import record_of
from .usage import UsageSummary, period_start, summarize

__all__ = ["Queries"]


class Queries:
    """Read-only questions about jobs (see the module doc)."""

    def __init__(self, tx: Transactions) -> None:
        self.tx = tx

    async def get_job(self, job_id: int) -> JobRecord | None:
        async def work(session: AsyncSession) -> JobRecord | None:
            row = await session.get(Job, job_id)
            return None if row is None else record_of(row)

        return await self.tx.read(work)

    async def jobs_for_user(
        self, guild_id: int, user_id: int, *, limit: int
    ) -> tuple[JobRecord, ...]:
        """The user's most recent jobs in the guild, newest first."""
        stmt = (
            select(Job)
            .where(Job.guild_id == guild_id, Job.user_id == user_id)
            .order_by(Job.queued_at.desc(), Job.id.desc())
            .limit(limit)
        )
        return await self._records(stmt)

    async def active_jobs(self, guild_id: int | None) -> tuple[JobRecord, ...]:
        """Queued and running jobs, oldest first (all guilds unless one is given)."""
        stmt = select(Job).where(Job.status.in_(statuses(ACTIVE_STATUSES)))
        if guild_id is not None:
            stmt = stmt.where(Job.guild_id == guild_id)
        return await self._records(stmt.order_by(Job.queued_at, Job.id))

    async def usage_summary(self, guild_id: int, days: int) -> UsageSummary:
        """Usage for `/usage [days]`: from midnight UTC `days - 1` days ago until now."""
        now = self.tx.now()
        since = period_start(now, days)

        async def work(session: AsyncSession) -> UsageSummary:
            return await summarize(session, guild_id, since, now)

        return await self.tx.read(work)

    async def _records(self, stmt: Any) -> tuple[JobRecord, ...]:
        async def work(session: AsyncSession) -> tuple[JobRecord, ...]:
            return tuple(record_of(j) for j in await session.scalars(stmt))

        return await self.tx.read(work)
