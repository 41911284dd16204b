"""Allowances: moderators' per-user overrides with their audit, and a user's standing.

`Allowances` is the one owner of the writes to `quota_overrides` and `quota_audit`. The
rules themselves (the rolling window's arithmetic) are pure, in `quota.py`; the `*_in`
functions here read what a reservation needs inside its own transaction.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from .jobs import ACTIVE_STATUSES, COUNTED_STATUSES, JobStatus
from .models import Job, QuotaAudit, QuotaOverride
from .quota import (
    WINDOW,
    CountedImages,
    QuotaChange,
    QuotaKind,
    QuotaPolicy,
    QuotaSetting,
    UserStatus,
    images_used,
    next_increase,
)
from .settings import read_settings
from .transactions import Transactions

__all__ = [
    "Allowances",
    "Standing",
    "setting_in",
    "standings_in",
    "statuses",
]


def statuses(values: Iterable[JobStatus]) -> list[str]:
    """Job statuses as stored, for `Job.status.in_(...)`."""
    return sorted(str(s) for s in values)


def _setting_of(row: QuotaOverride | None) -> QuotaSetting:
    return QuotaSetting.from_override(
        None if row is None else row.daily_images, exists=row is not None
    )


async def setting_in(session: AsyncSession, guild_id: int, user_id: int) -> QuotaSetting:
    """The user's quota setting: a moderator's override, or the guild's default."""
    return _setting_of(await session.get(QuotaOverride, (guild_id, user_id)))


def _counts(now: datetime) -> ColumnElement[bool]:
    """Whether a job counts against its user's allowance at `now`."""
    return and_(Job.status.in_(statuses(COUNTED_STATUSES)), Job.queued_at > now - WINDOW)


@dataclass(slots=True)
class Standing:
    """What a reservation reads of one user in one guild: their setting, the images that
    count at `now`, and their jobs queued or running (`standings_in`)."""

    setting: QuotaSetting
    counted: list[CountedImages]
    active: int  # queued or running
    running: int = 0


async def standings_in(
    session: AsyncSession, guild_id: int, user_ids: Iterable[int], now: datetime
) -> dict[int, Standing]:
    """`setting_in`, the images that count at `now` and the number of jobs queued or running
    (held against `max_queued_per_user`) for many users of one guild, in two statements
    whatever their number (a group's reservations, or one user's `/info`): under a burst each
    statement is a trip through the busy event loop, and a reservation waits for them all."""
    users = sorted(set(user_ids))
    found = {u: Standing(_setting_of(None), [], 0) for u in users}
    overrides = await session.scalars(
        select(QuotaOverride).where(
            QuotaOverride.guild_id == guild_id, QuotaOverride.user_id.in_(users)
        )
    )
    for row in overrides:
        found[row.user_id].setting = _setting_of(row)
    # One read of the jobs for both: the database says which count at `now`.
    active, counts = statuses(ACTIVE_STATUSES), _counts(now)
    jobs = await session.execute(
        select(Job.user_id, Job.status, Job.queued_at, Job.image_count, counts).where(
            Job.guild_id == guild_id, Job.user_id.in_(users), or_(Job.status.in_(active), counts)
        )
    )
    for user_id, status, queued_at, images, is_counted in jobs:
        standing = found[user_id]
        if status in active:
            standing.active += 1
            standing.running += status == JobStatus.RUNNING
        if is_counted:
            standing.counted.append(CountedImages(queued_at, images))
    return found


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


class Allowances:
    """Quota policies, per-user overrides and their audit log.

    `policy` is the default for every guild; `guild_policies` overrides it per guild id; a
    guild's moderators may set its `daily_images` with `/settings` over both.
    """

    def __init__(
        self,
        tx: Transactions,
        policy: QuotaPolicy,
        guild_policies: Mapping[int, QuotaPolicy],
    ) -> None:
        self.tx = tx
        self.policy = policy
        self._guild_policies = dict(guild_policies)

    def policy_for(self, guild_id: int) -> QuotaPolicy:
        """The config's policy for the guild."""
        return self._guild_policies.get(guild_id, self.policy)

    async def policy_in(self, session: AsyncSession, guild_id: int) -> QuotaPolicy:
        """The guild's quota policy: its moderators' default allowance over the config's."""
        policy = self.policy_for(guild_id)
        daily = (await read_settings(session, guild_id)).daily_images
        return policy if daily is None else dataclasses.replace(policy, daily_images=daily)

    # -- overrides --------------------------------------------------------------------------

    async def set_user_quota(
        self, guild_id: int, user_id: int, daily: int | None, *, by: int, reason: str | None
    ) -> QuotaChange:
        """Override a user's allowance: images per 24 h, None for unlimited, 0 to block."""
        if daily is not None and daily < 0:
            raise ValueError("daily must be None (unlimited) or 0 or more")
        new = (
            QuotaSetting(QuotaKind.UNLIMITED)
            if daily is None
            else QuotaSetting(QuotaKind.LIMITED, daily)
        )
        return await self._change_quota(guild_id, user_id, new, by, reason)

    async def reset_user_quota(
        self, guild_id: int, user_id: int, *, by: int, reason: str | None
    ) -> QuotaChange:
        """Remove the override: the guild's default applies again."""
        return await self._change_quota(
            guild_id, user_id, QuotaSetting(QuotaKind.DEFAULT), by, reason
        )

    async def _change_quota(
        self, guild_id: int, user_id: int, new: QuotaSetting, by: int, reason: str | None
    ) -> QuotaChange:
        async def work(session: AsyncSession) -> QuotaChange:
            await self.tx.lock_user(session, guild_id, user_id)
            now = self.tx.now()
            row = await session.get(QuotaOverride, (guild_id, user_id))
            old = _setting_of(row)
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

        return await self.tx.write(work)

    # -- reads ------------------------------------------------------------------------------

    async def quota_setting(self, guild_id: int, user_id: int) -> QuotaSetting:
        async def work(session: AsyncSession) -> QuotaSetting:
            return await setting_in(session, guild_id, user_id)

        return await self.tx.read(work)

    async def quota_history(
        self, guild_id: int, user_id: int | None, *, limit: int
    ) -> tuple[QuotaChange, ...]:
        """The guild's (or one user's) quota changes, newest first."""
        stmt = select(QuotaAudit).where(QuotaAudit.guild_id == guild_id)
        if user_id is not None:
            stmt = stmt.where(QuotaAudit.user_id == user_id)
        stmt = stmt.order_by(QuotaAudit.changed_at.desc(), QuotaAudit.id.desc()).limit(limit)

        async def work(session: AsyncSession) -> tuple[QuotaChange, ...]:
            return tuple(_change(a) for a in await session.scalars(stmt))

        return await self.tx.read(work)

    async def user_status(self, guild_id: int, user_id: int) -> UserStatus:
        """Allowance, images used in the last 24 h, when it refills, jobs in flight."""

        async def work(session: AsyncSession) -> UserStatus:
            now = self.tx.now()
            policy = await self.policy_in(session, guild_id)
            standing = (await standings_in(session, guild_id, [user_id], now))[user_id]
            return UserStatus(
                guild_id=guild_id,
                user_id=user_id,
                setting=standing.setting,
                limit=standing.setting.limit(policy),
                used=images_used(standing.counted, now),
                queued=standing.active - standing.running,
                running=standing.running,
                refills_at=next_increase(standing.counted, now),
            )

        return await self.tx.read(work)
