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
from typing import Any

from sqlalchemy import (
    ColumnElement,
    CompoundSelect,
    and_,
    bindparam,
    literal_column,
    null,
    or_,
    select,
    type_coerce,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncSession

from .jobs import ACTIVE_STATUSES, COUNTED_STATUSES, JobStatus
from .models import GuildSettingsRow, Job, QuotaAudit, QuotaOverride
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
from .transactions import Transactions

__all__ = [
    "Allowances",
    "Standing",
    "Standings",
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


@dataclass(slots=True)
class Standing:
    """What a reservation reads of one user in one guild: their setting, the images that
    count at `now`, and their jobs queued or running (`standings_in`)."""

    setting: QuotaSetting
    counted: list[CountedImages]
    active: int  # queued or running
    running: int = 0


@dataclass(slots=True)
class Standings:
    """What a reservation reads of one guild: its moderators' `daily_images` (None: the
    config's) and each user's `Standing`."""

    daily_images: int | None
    users: dict[int, Standing]


def _standings_statement() -> CompoundSelect:
    """The guild's `daily_images`, the users' overrides and their jobs that count or are in
    flight, as rows of one statement (`standings_in`). Built once: the bound values change,
    not the statement, so SQLAlchemy neither builds nor keys it again for each reservation."""
    guild, users = bindparam("guild_id"), bindparam("users", expanding=True)
    counts = and_(
        Job.status.in_(statuses(COUNTED_STATUSES)), Job.queued_at > bindparam("counted_since")
    )

    def none(like: ColumnElement[Any]) -> ColumnElement[Any]:  # a NULL of `like`'s type
        return type_coerce(null(), like.type)

    # "number": a job's images, an override's or the guild's daily_images.
    jobs = select(
        literal_column("'job'").label("kind"),
        Job.user_id,
        Job.image_count.label("number"),
        Job.status,
        Job.queued_at,
        counts.label("counted"),
    ).where(
        Job.guild_id == guild,
        Job.user_id.in_(users),
        or_(Job.status.in_(statuses(ACTIVE_STATUSES)), counts),
    )
    overrides = select(
        literal_column("'override'"),
        QuotaOverride.user_id,
        QuotaOverride.daily_images,
        none(Job.status),
        none(Job.queued_at),
        none(counts),
    ).where(QuotaOverride.guild_id == guild, QuotaOverride.user_id.in_(users))
    guild_row = select(
        literal_column("'guild'"),
        none(Job.user_id),
        GuildSettingsRow.daily_images,
        none(Job.status),
        none(Job.queued_at),
        none(counts),
    ).where(GuildSettingsRow.guild_id == guild)
    return union_all(jobs, overrides, guild_row)


_STANDINGS = _standings_statement()


async def standings_in(
    session: AsyncSession, guild_id: int, user_ids: Iterable[int], now: datetime
) -> Standings:
    """The guild's `daily_images`, and for each user `setting_in`, the images that count at
    `now` and the number of jobs queued or running (held against `max_queued_per_user`):
    for many users of one guild (a group's reservations, or one user's `/info`) in ONE
    statement whatever their number. Under a burst each statement is a trip through the
    busy event loop, and every reservation of a group waits for them all."""
    users = sorted(set(user_ids))
    found = Standings(None, {u: Standing(_setting_of(None), [], 0) for u in users})
    bound = {"guild_id": guild_id, "users": users, "counted_since": now - WINDOW}
    rows = await (await session.connection()).execute(_STANDINGS, bound)
    active = statuses(ACTIVE_STATUSES)
    for kind, user_id, number, status, queued_at, is_counted in rows:
        if kind == "guild":
            found.daily_images = number
        elif kind == "override":
            found.users[user_id].setting = QuotaSetting.from_override(number, exists=True)
        else:
            standing = found.users[user_id]
            if status in active:
                standing.active += 1
                standing.running += status == JobStatus.RUNNING
            if is_counted:
                standing.counted.append(CountedImages(queued_at, number))
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

    def policy_with(self, guild_id: int, daily_images: int | None) -> QuotaPolicy:
        """The guild's quota policy: its moderators' `daily_images` (read with its users'
        standings, `standings_in`) over the config's."""
        policy = self.policy_for(guild_id)
        if daily_images is None:
            return policy
        return dataclasses.replace(policy, daily_images=daily_images)

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
            found = await standings_in(session, guild_id, [user_id], now)
            policy = self.policy_with(guild_id, found.daily_images)
            standing = found.users[user_id]
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
