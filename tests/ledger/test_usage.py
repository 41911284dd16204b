"""The moderator's `/usage [days]` summary, with UTC day boundaries."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from bot.ledger import (
    DayUsage,
    JobKind,
    KindUsage,
    Ledger,
    QuotaPolicy,
    RefusalCount,
    RefusalReason,
    UserDayUsage,
    UserUsage,
)
from bot.ledger.usage import period_start

from .conftest import GUILD, OTHER_GUILD, FakeClock, LedgerFactory
from .conftest import make_request as req

A, B, C = 11, 22, 33


def at(day: int, hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime(2025, 2, day, hour, minute, second, tzinfo=UTC)


async def _done(ledger: Ledger, user: int, images: int, **changes: object) -> None:
    r = await ledger.reserve(req(user_id=user, image_count=images, **changes))
    assert r.accepted
    await ledger.mark_running(r.job.id)
    await ledger.mark_done(r.job.id)


@pytest.fixture
async def busy_guild(make_ledger: LedgerFactory, clock: FakeClock) -> Ledger:
    ledger = make_ledger(QuotaPolicy(daily_images=100, max_queued_per_user=100))
    clock.now = at(26, 12)
    await _done(ledger, A, 4)  # before the 3-day period
    clock.now = at(27, 23, 59, 59)
    await _done(ledger, A, 2)
    clock.now = at(28, 0, 0, 1)
    await _done(ledger, A, 1)
    await _done(ledger, B, 3)
    await _done(ledger, A, 5, guild_id=OTHER_GUILD)  # another guild
    clock.now = datetime(2025, 3, 1, 10, tzinfo=UTC)
    failed = await ledger.reserve(req(user_id=B, image_count=2))
    await ledger.mark_failed(failed.job.id, "oom")
    assert (await ledger.reserve(req(user_id=B))).accepted  # still queued: counts
    await ledger.record_refusal(req(user_id=A), RefusalReason.BLOCKED_WORD)
    await ledger.record_refusal(req(user_id=C), RefusalReason.BLOCKED_WORD)
    await ledger.record_refusal(req(user_id=C), "nsfw")
    clock.now = datetime(2025, 3, 1, 12, tzinfo=UTC)
    return ledger


async def test_summary_over_three_days(busy_guild: Ledger) -> None:
    s = await busy_guild.usage_summary(GUILD, days=3)
    assert s.since == datetime(2025, 2, 27, tzinfo=UTC) and s.until == busy_guild.now()
    assert s.users == (
        UserUsage(B, images=4, jobs=2, failed=1, refused=0),
        UserUsage(A, images=3, jobs=2, failed=0, refused=1),
        UserUsage(C, images=0, jobs=0, failed=0, refused=2),
    )
    assert [u.user_id for u in s.top_users(5)] == [B, A]
    assert s.days == (
        DayUsage(date(2025, 2, 27), images=2, jobs=1, users=1),
        DayUsage(date(2025, 2, 28), images=4, jobs=2, users=2),
        DayUsage(date(2025, 3, 1), images=1, jobs=1, users=1),
    )
    assert s.user_days == (
        UserDayUsage(date(2025, 2, 27), A, 2, 1),
        UserDayUsage(date(2025, 2, 28), B, 3, 1),
        UserDayUsage(date(2025, 2, 28), A, 1, 1),
        UserDayUsage(date(2025, 3, 1), B, 1, 1),
    )
    assert s.refusals == (
        RefusalCount(RefusalReason.BLOCKED_WORD, 2),
        RefusalCount("nsfw", 1),
    )
    assert (s.total_images, s.total_jobs, s.total_refusals) == (7, 4, 3)


async def test_summary_of_today_only(busy_guild: Ledger) -> None:
    s = await busy_guild.usage_summary(GUILD, days=1)
    assert [(u.user_id, u.images) for u in s.users] == [(B, 1), (A, 0), (C, 0)]
    assert s.days == (DayUsage(date(2025, 3, 1), 1, 1, 1),)


async def test_empty_guild(ledger: Ledger) -> None:
    s = await ledger.usage_summary(999, days=30)
    assert (s.users, s.days, s.refusals, s.total_images) == ((), (), (), 0)


def test_period_start() -> None:
    now = datetime(2025, 3, 1, 0, 30, tzinfo=UTC)
    assert period_start(now, 1) == datetime(2025, 3, 1, tzinfo=UTC)
    assert period_start(now, 7) == datetime(2025, 2, 23, tzinfo=UTC)
    with pytest.raises(ValueError):
        period_start(now, 0)


async def test_usage_counts_images_by_kind(make_ledger: LedgerFactory, clock: FakeClock) -> None:
    """An upscale counts its cost, a variation its images; refused jobs count nowhere."""
    ledger = make_ledger(QuotaPolicy(daily_images=100, max_queued_per_user=100))
    clock.now = at(27, 12)
    await _done(ledger, A, 4)
    await _done(ledger, A, 2, kind=JobKind.UPSCALE, source_job_id=1, source_index=0)
    await _done(ledger, B, 2, kind=JobKind.UPSCALE, source_job_id=1, source_index=3)
    await _done(ledger, B, 4, kind=JobKind.VARIATION, source_job_id=1, source_index=1)
    await ledger.record_refusal(req(user_id=C, kind=JobKind.UPSCALE), RefusalReason.QUOTA)
    clock.now = at(27, 13)
    s = await ledger.usage_summary(GUILD, days=1)
    assert s.kinds == (
        KindUsage(JobKind.IMAGINE, 4, 1),
        KindUsage(JobKind.UPSCALE, 4, 2),
        KindUsage(JobKind.VARIATION, 4, 1),
    )
    assert s.total_images == 12
