"""`Ledger`: what the bot calls to read and write the usage ledger; cogs never write SQL.

A thin facade with no SQL of its own: each group of writes has one owner module, and this
class only hands every call to it.

    transactions.py  sessions, the per-user lock, the retry rule (`Transactions`)
    transitions.py   jobs: reservation, refusals, status moves, refunds, restart requeue
    allowances.py    quota policies, per-user overrides and their audit, a user's standing
    settings.py      per-guild settings and their audit (`SettingsBook`)
    lease.py         process and shard leases (`Leases`)
    queries.py       one job, a user's history, jobs in flight, usage summaries
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from .allowances import Allowances
from .database import create_engine, upgrade_to_head
from .jobs import JobRecord, JobRequest, RefusalReason
from .lease import LeaseHolder, Leases
from .queries import Queries
from .quota import QuotaChange, QuotaPolicy, QuotaSetting, Reservation, UserStatus
from .settings import GuildSettings, SettingsBook, SettingsChange
from .shards import OWNER_LEASE, Shards
from .transactions import RetryPolicy, Transactions, utcnow
from .transitions import Transitions
from .usage import UsageSummary

__all__ = ["Ledger", "RetryPolicy", "open_ledger", "utcnow"]


class Ledger:
    """Jobs, quotas, settings and leases, on one engine.

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
        self._tx = Transactions(engine, clock=clock, retry=retry)
        self._allowances = Allowances(self._tx, policy or QuotaPolicy(), guild_policies or {})
        self._jobs = Transitions(self._tx, self._allowances)
        self._settings = SettingsBook(self._tx)
        self._leases = Leases(self._tx)
        self._queries = Queries(self._tx)

    # -- plumbing -----------------------------------------------------------------------

    @property
    def policy(self) -> QuotaPolicy:
        return self._allowances.policy

    def now(self) -> datetime:
        return self._tx.now()

    async def ping(self) -> bool:
        """Whether the database answers a query in time (health)."""
        return await self._tx.ping()

    async def close(self) -> None:
        """Write what waits to be written (`open_ledger` calls it before disposing)."""
        await self._tx.close()

    def policy_for(self, guild_id: int) -> QuotaPolicy:
        return self._allowances.policy_for(guild_id)

    # -- jobs (transitions.py) ------------------------------------------------------------

    async def reserve(self, request: JobRequest) -> Reservation:
        """Check the user's allowance and in-flight jobs and store the job, atomically."""
        return await self._jobs.reserve(request)

    async def record_refusal(
        self, request: JobRequest, reason: RefusalReason | str, detail: str | None = None
    ) -> JobRecord:
        """Store a request the bot turned down before reserving; it takes no images."""
        return await self._jobs.record_refusal(request, reason, detail)

    async def mark_running(self, job_id: int) -> bool:
        """queued → running."""
        return await self._jobs.mark_running(job_id)

    async def mark_done(self, job_id: int, message_id: int | None = None) -> bool:
        """queued/running → done; with `message_id`, delivered too."""
        return await self._jobs.mark_done(job_id, message_id)

    async def start_delivery(
        self, job_id: int, *, unkept: str | None = None, charge: int | None = None
    ) -> bool:
        """Record that the result is about to be posted (and, with `charge`, its final price)."""
        return await self._jobs.start_delivery(job_id, unkept=unkept, charge=charge)

    async def mark_failed(self, job_id: int, error: str) -> bool:
        """queued/running → failed: the images are given back."""
        return await self._jobs.mark_failed(job_id, error)

    async def mark_cancelled(self, job_id: int, error: str | None = None) -> bool:
        """queued/running → cancelled: the images are given back."""
        return await self._jobs.mark_cancelled(job_id, error)

    async def refuse(
        self, job_id: int, reason: RefusalReason | str, detail: str | None = None
    ) -> bool:
        """queued → refused: as if it never took images."""
        return await self._jobs.refuse(job_id, reason, detail)

    async def refund_images(self, job_id: int, images: int) -> bool:
        """Give back `images` of a done job that were never posted."""
        return await self._jobs.refund_images(job_id, images)

    async def set_message(self, job_id: int, message_id: int) -> bool:
        """Remember the progress/result message to edit later."""
        return await self._jobs.set_message(job_id, message_id)

    async def requeue_interrupted(self, shards: Shards | None = None) -> tuple[JobRecord, ...]:
        """Put a dead process's running jobs of `shards` back to queued; list all queued."""
        return await self._jobs.requeue_interrupted(shards or Shards())

    async def forget_tokens(self, job_ids: Iterable[int]) -> int:
        """Drop interaction tokens that can no longer be used."""
        return await self._jobs.forget_tokens(job_ids)

    # -- reads of jobs (queries.py) -------------------------------------------------------

    async def get_job(self, job_id: int) -> JobRecord | None:
        return await self._queries.get_job(job_id)

    async def jobs_for_user(
        self, guild_id: int, user_id: int, *, limit: int = 20
    ) -> tuple[JobRecord, ...]:
        """The user's most recent jobs in the guild, newest first."""
        return await self._queries.jobs_for_user(guild_id, user_id, limit=limit)

    async def active_jobs(self, guild_id: int | None = None) -> tuple[JobRecord, ...]:
        """Queued and running jobs, oldest first (all guilds unless one is given)."""
        return await self._queries.active_jobs(guild_id)

    async def usage_summary(self, guild_id: int, days: int = 7) -> UsageSummary:
        """Usage for `/usage [days]`."""
        return await self._queries.usage_summary(guild_id, days)

    # -- quotas (allowances.py) -----------------------------------------------------------

    async def set_user_quota(
        self, guild_id: int, user_id: int, daily: int | None, *, by: int, reason: str | None = None
    ) -> QuotaChange:
        """Override a user's allowance (None: unlimited, 0: blocked), audited."""
        return await self._allowances.set_user_quota(guild_id, user_id, daily, by=by, reason=reason)

    async def block_user(
        self, guild_id: int, user_id: int, *, by: int, reason: str | None = None
    ) -> QuotaChange:
        """Set the user's allowance to 0: every request is refused as `user_blocked`."""
        return await self._allowances.set_user_quota(guild_id, user_id, 0, by=by, reason=reason)

    async def reset_user_quota(
        self, guild_id: int, user_id: int, *, by: int, reason: str | None = None
    ) -> QuotaChange:
        """Remove the override: the guild's default applies again."""
        return await self._allowances.reset_user_quota(guild_id, user_id, by=by, reason=reason)

    async def quota_setting(self, guild_id: int, user_id: int) -> QuotaSetting:
        return await self._allowances.quota_setting(guild_id, user_id)

    async def quota_history(
        self, guild_id: int, user_id: int | None = None, *, limit: int = 25
    ) -> tuple[QuotaChange, ...]:
        """The guild's (or one user's) quota changes, newest first."""
        return await self._allowances.quota_history(guild_id, user_id, limit=limit)

    async def user_status(self, guild_id: int, user_id: int) -> UserStatus:
        """Allowance, images used in the last 24 h, when it refills, jobs in flight."""
        return await self._allowances.user_status(guild_id, user_id)

    # -- guild settings (settings.py) -----------------------------------------------------

    async def guild_settings(self, guild_id: int) -> GuildSettings:
        """The guild's own settings (fields left None take the config's)."""
        return await self._settings.get(guild_id)

    async def change_guild_setting(
        self, guild_id: int, name: str, value: Any, by: int
    ) -> SettingsChange:
        """Set (or, with None, reset) one setting of a guild, audited."""
        return await self._settings.change(guild_id, name, value, by)

    async def settings_history(
        self, guild_id: int, *, limit: int = 25
    ) -> tuple[SettingsChange, ...]:
        """The guild's settings changes, newest first."""
        return await self._settings.history(guild_id, limit=limit)

    # -- ownership (lease.py) -------------------------------------------------------------

    async def leases(self) -> tuple[tuple[str, LeaseHolder], ...]:
        """Every lease row: its name and holder."""
        return await self._leases.all()

    async def claim_lease(
        self, me: LeaseHolder, stale: Callable[[LeaseHolder], bool], name: str = OWNER_LEASE
    ) -> LeaseHolder:
        """Make `me` the owner of lease `name` unless a live process is; the owner after."""
        return await self._leases.claim(me, stale, name)

    async def renew_lease(self, me: LeaseHolder, name: str = OWNER_LEASE) -> bool:
        """The owner's heartbeat; False if another process holds the lease now."""
        return await self._leases.renew(me, name)

    async def release_lease(self, me: LeaseHolder, name: str = OWNER_LEASE) -> None:
        """Give the lease up (a clean stop), if `me` still holds it."""
        await self._leases.release(me, name)


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
    ledger = Ledger(engine, policy, guild_policies=guild_policies, clock=clock)
    try:
        yield ledger
    finally:
        await ledger.close()
        await engine.dispose()
