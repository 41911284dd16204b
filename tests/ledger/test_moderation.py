"""Moderators' per-user overrides, the audit log, and `user_status`."""

from __future__ import annotations

from datetime import timedelta

import pytest

from bot.ledger import WINDOW, QuotaKind, QuotaPolicy, QuotaSetting

from .conftest import GUILD, MODERATOR, OTHER_GUILD, USER, FakeClock, LedgerFactory
from .conftest import make_request as req

DEFAULT = QuotaSetting(QuotaKind.DEFAULT)


async def test_overrides_are_audited(make_ledger: LedgerFactory, clock: FakeClock) -> None:
    ledger = make_ledger(QuotaPolicy(daily_images=5))
    first = await ledger.set_user_quota(GUILD, USER, 40, by=MODERATOR, reason="artist")
    assert (first.old, first.new) == (DEFAULT, QuotaSetting(QuotaKind.LIMITED, 40))
    assert (first.guild_id, first.user_id, first.moderator_id) == (GUILD, USER, MODERATOR)
    assert first.changed_at == clock.now and first.reason == "artist"
    clock.advance(minutes=1)
    await ledger.set_user_quota(GUILD, USER, None, by=MODERATOR + 1)
    clock.advance(minutes=1)
    await ledger.block_user(GUILD, USER, by=MODERATOR, reason="spam")
    assert (await ledger.quota_setting(GUILD, USER)).blocked
    clock.advance(minutes=1)
    last = await ledger.reset_user_quota(GUILD, USER, by=MODERATOR)
    assert (last.old, last.new) == (QuotaSetting(QuotaKind.LIMITED, 0), DEFAULT)
    assert await ledger.quota_setting(GUILD, USER) == DEFAULT

    history = await ledger.quota_history(GUILD)
    assert [(str(c.old), str(c.new)) for c in history] == [
        ("blocked", "default"),
        ("unlimited", "blocked"),
        ("40 images/24h", "unlimited"),
        ("default", "40 images/24h"),
    ]
    assert history[2].moderator_id == MODERATOR + 1
    assert await ledger.quota_history(GUILD, USER + 1) == ()
    assert await ledger.quota_history(OTHER_GUILD) == ()
    assert len(await ledger.quota_history(GUILD, USER, limit=2)) == 2


async def test_reset_without_override_is_still_audited(make_ledger: LedgerFactory) -> None:
    ledger = make_ledger()
    change = await ledger.reset_user_quota(GUILD, USER, by=MODERATOR)
    assert (change.old, change.new) == (DEFAULT, DEFAULT)
    assert len(await ledger.quota_history(GUILD, USER)) == 1


async def test_negative_quota_is_rejected(make_ledger: LedgerFactory) -> None:
    ledger = make_ledger()
    with pytest.raises(ValueError):
        await ledger.set_user_quota(GUILD, USER, -1, by=MODERATOR)
    assert await ledger.quota_history(GUILD) == ()


async def test_user_status(make_ledger: LedgerFactory, clock: FakeClock) -> None:
    ledger = make_ledger(QuotaPolicy(daily_images=6, max_queued_per_user=5))
    empty = await ledger.user_status(GUILD, USER)
    assert (empty.limit, empty.used, empty.remaining, empty.refills_at) == (6, 0, 6, None)
    first = await ledger.reserve(req(image_count=2))
    clock.advance(hours=2)
    second = await ledger.reserve(req(image_count=3))
    await ledger.mark_running(second.job.id)
    status = await ledger.user_status(GUILD, USER)
    assert (status.used, status.remaining, status.queued, status.running) == (5, 1, 1, 1)
    assert status.refills_at == first.job.queued_at + WINDOW
    assert not status.unlimited and not status.blocked

    clock.now = first.job.queued_at + WINDOW + timedelta(seconds=1)
    later = await ledger.user_status(GUILD, USER)
    assert (later.used, later.refills_at) == (3, second.job.queued_at + WINDOW)

    await ledger.set_user_quota(GUILD, USER, None, by=MODERATOR)
    unlimited = await ledger.user_status(GUILD, USER)
    assert unlimited.unlimited and unlimited.remaining is None and unlimited.used == 3
    await ledger.block_user(GUILD, USER, by=MODERATOR)
    blocked = await ledger.user_status(GUILD, USER)
    assert blocked.blocked and blocked.remaining == 0


async def test_job_listings(make_ledger: LedgerFactory, clock: FakeClock) -> None:
    ledger = make_ledger(QuotaPolicy(daily_images=50, max_queued_per_user=50))
    ids = []
    for _ in range(4):
        ids.append((await ledger.reserve(req())).job.id)
        clock.advance(seconds=1)
    other = (await ledger.reserve(req(guild_id=OTHER_GUILD))).job.id
    await ledger.mark_running(ids[1])
    await ledger.mark_done(ids[2])
    assert [j.id for j in await ledger.jobs_for_user(GUILD, USER)] == ids[::-1]
    assert [j.id for j in await ledger.jobs_for_user(GUILD, USER, limit=2)] == ids[:1:-1]
    assert [j.id for j in await ledger.active_jobs()] == [ids[0], ids[1], ids[3], other]
    assert [j.id for j in await ledger.active_jobs(GUILD)] == [ids[0], ids[1], ids[3]]


async def test_requests_finding_no_rules_cached_share_one_read(
    make_ledger: LedgerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst's first requests find the guild's rules uncached together: one read of its
    settings serves them all. A read begun before a `/settings` change answers the requests
    that waited for it, but is not kept: the next request reads the change."""
    import asyncio

    from sqlalchemy import event

    from bot.config import ModerationSettings
    from bot.ledger import parse_setting
    from bot.moderation.guilds import GuildRules

    ledger = make_ledger()
    words = parse_setting("blocked_words", "dragon")
    await ledger.change_guild_setting(GUILD, "blocked_words", words, by=MODERATOR)
    rules = GuildRules(ledger, ModerationSettings(), daily_images=10)
    reads: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_rest: object) -> None:
        if "FROM guild_settings" in statement:
            reads.append(statement)

    event.listen(ledger.engine.sync_engine, "before_cursor_execute", seen)
    found = await asyncio.gather(*(rules.moderation(GUILD) for _ in range(20)))
    event.remove(ledger.engine.sync_engine, "before_cursor_execute", seen)
    assert len(reads) == 1 and all(m is found[0] for m in found)
    assert found[0].blocked_word("a dragon") == "dragon"

    # A read that finished before the change, its answer held until the change is made.
    rules = GuildRules(ledger, ModerationSettings(), daily_images=10)
    read, let_go = asyncio.Event(), asyncio.Event()
    real = ledger.guild_settings

    async def held(guild_id: int) -> object:
        settings = await real(guild_id)
        read.set()
        await let_go.wait()
        return settings

    monkeypatch.setattr(ledger, "guild_settings", held)
    before = asyncio.ensure_future(rules.moderation(GUILD))
    await read.wait()
    castle = parse_setting("blocked_words", "castle")
    await rules.change(GUILD, "blocked_words", castle, by=MODERATOR)
    let_go.set()
    assert (await before).blocked_word("a castle") is None  # the rules it asked under
    assert (await rules.moderation(GUILD)).blocked_word("a castle") == "castle"


async def test_guild_settings_are_per_guild_audited_and_set_the_default_allowance(
    make_ledger: LedgerFactory, clock: FakeClock
) -> None:
    from bot.ledger import GuildSettings, RefusalReason, parse_setting

    ledger = make_ledger(QuotaPolicy(daily_images=5))
    assert await ledger.guild_settings(GUILD) == GuildSettings()
    words = parse_setting("blocked_words", "boat, dragon,  boat")
    await ledger.change_guild_setting(GUILD, "blocked_words", words, by=MODERATOR)
    await ledger.change_guild_setting(GUILD, "daily_images", 1, by=MODERATOR + 1)
    own = await ledger.guild_settings(GUILD)
    assert own.blocked_words == ("boat", "dragon") and own.daily_images == 1
    assert await ledger.guild_settings(OTHER_GUILD) == GuildSettings()  # its own, untouched

    # The guild's default allowance is used by reservations and shown in user_status.
    assert (await ledger.reserve(req(image_count=1))).accepted
    refused = await ledger.reserve(req(image_count=1))
    assert refused.reason == RefusalReason.QUOTA
    assert (await ledger.user_status(GUILD, USER)).limit == 1
    assert (await ledger.reserve(req(guild_id=OTHER_GUILD, image_count=2))).accepted

    clock.advance(minutes=1)
    back = await ledger.change_guild_setting(GUILD, "daily_images", None, by=MODERATOR)
    assert (back.old, back.new) == ("1", None)
    assert (await ledger.user_status(GUILD, USER)).limit == 5
    history = await ledger.settings_history(GUILD)
    assert [(c.setting, c.old, c.new, c.moderator_id) for c in history] == [
        ("daily_images", "1", None, MODERATOR),
        ("daily_images", None, "1", MODERATOR + 1),
        ("blocked_words", None, '["boat", "dragon"]', MODERATOR),
    ]
    with pytest.raises(ValueError, match="whole number"):
        parse_setting("daily_images", "lots")
