"""Restart recovery: classification, re-queueing without double counting, giving up."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from bot.ledger import (
    JobRecord,
    JobStatus,
    Ledger,
    QuotaPolicy,
    TokenCheck,
    classify,
    create_engine,
    give_up,
    plan_recovery,
)
from bot.timing.limits import TOKEN_USABLE_FOR

from .conftest import GUILD, USER, FakeClock, LedgerFactory
from .conftest import make_request as req

POLICY = QuotaPolicy(daily_images=10, max_queued_per_user=10)


def young(ledger: Ledger) -> TokenCheck:
    """The bot's rule, on the ledger's (test) clock: a token lives 14 minutes after queueing."""
    return lambda job: ledger.now() - job.queued_at < TOKEN_USABLE_FOR


async def _reserved(ledger: Ledger, **changes: object) -> JobRecord:
    r = await ledger.reserve(req(**changes))
    assert r.accepted
    return r.job


async def test_classify_by_token_age(ledger: Ledger, clock: FakeClock) -> None:
    job = await _reserved(ledger)
    at = job.queued_at
    fresh = replace(job, id=1, queued_at=at - timedelta(minutes=13, seconds=59))
    edge = replace(job, id=2, queued_at=at - timedelta(minutes=14))
    old = replace(job, id=3, queued_at=at - timedelta(hours=2))
    tokenless = replace(job, id=4, request=replace(job.request, interaction_token=None))
    plan = classify([old, tokenless, edge, fresh], lambda j: at - j.queued_at < TOKEN_USABLE_FOR)
    assert [j.id for j in plan.requeue] == [1]
    assert [j.id for j in plan.post_to_channel] == [3, 2, 4]  # oldest first
    assert len(plan) == 4


async def test_restart_requeues_interrupted_jobs_keeping_their_reservation(
    make_ledger: LedgerFactory, db_url: str, clock: FakeClock
) -> None:
    before = make_ledger(POLICY)
    old = await _reserved(before, image_count=2, seed=11)
    await before.mark_running(old.id)
    clock.advance(minutes=20)
    fresh_running = await _reserved(before, image_count=3, seed=22)
    await before.mark_running(fresh_running.id)
    clock.advance(minutes=1)
    fresh_queued = await _reserved(before, seed=33)
    finished = await _reserved(before, seed=44)
    await before.mark_done(finished.id)
    used_before = (await before.user_status(GUILD, USER)).used
    assert used_before == 7
    clock.advance(minutes=5)

    # "Restart": a new engine and ledger on the same database.
    engine = create_engine(db_url)
    try:
        after = Ledger(engine, POLICY, clock=clock)
        plan = await plan_recovery(after, young(after))
        assert [j.id for j in plan.requeue] == [fresh_running.id, fresh_queued.id]
        assert [j.id for j in plan.post_to_channel] == [old.id]
        assert all(j.status is JobStatus.QUEUED and j.started_at is None for j in plan)
        assert [j.request.seed for j in plan.requeue] == [22, 33]  # same seed: same picture
        token = fresh_running.request.interaction_token
        assert plan.requeue[0].request.interaction_token == token
        assert plan.post_to_channel[0].request.interaction_token is None
        stored = await after.get_job(old.id)
        assert stored is not None and stored.request.interaction_token is None  # secret dropped

        status = await after.user_status(GUILD, USER)
        assert (status.used, status.queued, status.running) == (used_before, 3, 0)
        # Recovering again (another restart) finds the same rows: nothing is duplicated.
        again = await plan_recovery(after, young(after))
        assert sorted(j.id for j in again) == sorted(j.id for j in plan)
        assert (await after.user_status(GUILD, USER)).used == used_before
        clock.advance(minutes=10)  # now every token is too old
        assert [j.id for j in (await plan_recovery(after, young(after))).requeue] == []
        r = await after.reserve(req(image_count=4))  # 3 left, not 4
        assert not r.accepted and r.remaining == 10 - used_before

        assert await after.mark_running(fresh_running.id)  # the bot runs it again
        assert await give_up(after, old.id)
        assert not await give_up(after, finished.id)  # done jobs are left alone
        assert (await after.user_status(GUILD, USER)).used == used_before - 2
    finally:
        await engine.dispose()


async def test_nothing_to_recover(ledger: Ledger) -> None:
    job = await _reserved(ledger)
    await ledger.mark_cancelled(job.id)
    plan = await plan_recovery(ledger, young(ledger))
    assert len(plan) == 0
