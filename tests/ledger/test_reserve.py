"""Atomic reservations: allowance, in-flight limit, refusals, and concurrency (both DBs)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from dataclasses import fields
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from bot.ledger import (
    WINDOW,
    JobRecord,
    JobRequest,
    JobStatus,
    Ledger,
    QuotaPolicy,
    RefusalReason,
)
from bot.ledger.models import Job

from .conftest import GUILD, MODERATOR, OTHER_GUILD, OTHER_USER, USER, FakeClock, LedgerFactory
from .conftest import make_request as req

ROOMY = QuotaPolicy(daily_images=5, max_queued_per_user=100)


async def _jobs(ledger: Ledger, status: JobStatus | None = None) -> int:
    async with ledger.engine.connect() as conn:
        stmt = select(func.count()).select_from(Job)
        if status is not None:
            stmt = stmt.where(Job.status == str(status))
        return int(await conn.scalar(stmt) or 0)


async def test_accepted_reservation_is_a_queued_job_that_counts(
    make_ledger: LedgerFactory, clock: FakeClock
) -> None:
    ledger = make_ledger(ROOMY)
    r = await ledger.reserve(req(image_count=2))
    assert r.accepted and r.reason is None and r.retry_at is None
    assert (r.limit, r.remaining) == (5, 3)
    job = await ledger.get_job(r.job.id)
    assert job == r.job
    assert job is not None
    assert job.status is JobStatus.QUEUED
    assert job.queued_at == clock.now and job.queued_at.tzinfo is not None
    assert job.request == req(image_count=2)  # kept as asked
    assert job.request.seed == 2**63 - 1 and job.request.interaction_token is not None
    status = await ledger.user_status(GUILD, USER)
    assert (status.used, status.remaining, status.queued) == (2, 3, 1)


def test_a_record_holds_its_request_and_repeats_none_of_it() -> None:
    """One stored shape for a job: the ledger's own fields beside the request (issue 22)."""
    ledger_fields = {f.name for f in fields(JobRecord)}
    assert "request" in ledger_fields
    assert not ledger_fields & {f.name for f in fields(JobRequest)}


async def test_quota_refusal_is_stored_and_says_when_to_retry(
    make_ledger: LedgerFactory, clock: FakeClock
) -> None:
    ledger = make_ledger(ROOMY)
    first = await ledger.reserve(req(image_count=2))
    clock.advance(hours=3)
    await ledger.reserve(req(image_count=3))
    clock.advance(hours=1)
    refused = await ledger.reserve(req(image_count=2))
    assert not refused.accepted
    assert refused.reason is RefusalReason.QUOTA
    assert refused.job.status is JobStatus.REFUSED
    assert refused.job.request.interaction_token is None  # refused jobs never keep the secret
    # The first job's two images come back 24 h after it was queued: enough for two.
    assert refused.retry_at == first.job.queued_at + WINDOW
    assert refused.remaining == 0
    assert await _jobs(ledger, JobStatus.REFUSED) == 1
    assert (await ledger.user_status(GUILD, USER)).used == 5  # refusals take nothing


async def test_retry_at_is_none_when_the_request_can_never_fit(make_ledger: LedgerFactory) -> None:
    ledger = make_ledger(QuotaPolicy(daily_images=3, max_queued_per_user=9))
    r = await ledger.reserve(req(image_count=4))
    assert (r.accepted, r.reason, r.retry_at, r.remaining) == (False, "quota", None, 3)


async def test_allowance_comes_back_after_exactly_24_hours(
    make_ledger: LedgerFactory, clock: FakeClock
) -> None:
    ledger = make_ledger(QuotaPolicy(daily_images=1, max_queued_per_user=9))
    first = await ledger.reserve(req())
    assert first.accepted
    await ledger.mark_running(first.job.id)
    await ledger.mark_done(first.job.id)
    clock.now = first.job.queued_at + WINDOW - timedelta(microseconds=1)
    status = await ledger.user_status(GUILD, USER)
    assert status.refills_at == first.job.queued_at + WINDOW
    assert (await ledger.reserve(req())).reason == RefusalReason.QUOTA
    clock.now = first.job.queued_at + WINDOW
    assert (await ledger.reserve(req())).accepted


@pytest.mark.parametrize("end", ["failed", "cancelled", "refused"])
async def test_ended_jobs_give_their_images_back(make_ledger: LedgerFactory, end: str) -> None:
    ledger = make_ledger(QuotaPolicy(daily_images=2, max_queued_per_user=9))
    r = await ledger.reserve(req(image_count=2))
    assert not (await ledger.reserve(req())).accepted
    if end == "failed":
        await ledger.mark_running(r.job.id)
        assert await ledger.mark_failed(r.job.id, "CUDA out of memory")
    elif end == "cancelled":
        assert await ledger.mark_cancelled(r.job.id)
    else:
        assert await ledger.refuse(r.job.id, RefusalReason.QUEUE_FULL, "engine queue full")
    assert (await ledger.user_status(GUILD, USER)).used == 0
    assert (await ledger.reserve(req(image_count=2))).accepted


async def test_done_jobs_keep_counting(make_ledger: LedgerFactory) -> None:
    ledger = make_ledger(QuotaPolicy(daily_images=2, max_queued_per_user=9))
    r = await ledger.reserve(req(image_count=2))
    await ledger.mark_running(r.job.id)
    await ledger.mark_done(r.job.id)
    assert (await ledger.reserve(req())).reason == RefusalReason.QUOTA


async def test_in_flight_limit(make_ledger: LedgerFactory) -> None:
    ledger = make_ledger(QuotaPolicy(daily_images=50, max_queued_per_user=2))
    a = await ledger.reserve(req())
    b = await ledger.reserve(req())
    third = await ledger.reserve(req())
    assert a.accepted and b.accepted
    assert third.reason is RefusalReason.TOO_MANY_JOBS and third.retry_at is None
    assert third.remaining == 48
    assert (await ledger.reserve(req(user_id=OTHER_USER))).accepted  # per user
    await ledger.mark_running(a.job.id)
    assert (await ledger.reserve(req())).reason == RefusalReason.TOO_MANY_JOBS  # running counts
    await ledger.mark_done(a.job.id)
    assert (await ledger.reserve(req())).accepted


async def test_a_job_older_than_the_window_still_in_flight_holds_a_place_not_images(
    make_ledger: LedgerFactory, clock: FakeClock
) -> None:
    """A job queued a day ago and not yet run (a long outage) no longer takes from the
    allowance, yet still counts against `max_queued_per_user`: the one read of the user's
    jobs (for a reservation and for `/info`) tells the two apart. That read is the
    reservation's only one: the guild's settings and the user's override come with it
    (under a burst every statement is a trip through the busy event loop)."""
    from sqlalchemy import event

    ledger = make_ledger(QuotaPolicy(daily_images=4, max_queued_per_user=1))
    old = await ledger.reserve(req(image_count=4))
    clock.advance(hours=25)
    statements: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_rest: object) -> None:
        statements.append(statement)

    tables = ("FROM jobs", "FROM quota_overrides", "FROM guild_settings")
    event.listen(ledger.engine.sync_engine, "before_cursor_execute", seen)
    refused = await ledger.reserve(req())
    reads = [s for s in statements if any(t in s for t in tables)]
    assert len(reads) == 1 and all(t in reads[0] for t in tables), statements
    statements.clear()
    status = await ledger.user_status(GUILD, USER)
    event.remove(ledger.engine.sync_engine, "before_cursor_execute", seen)
    assert refused.reason is RefusalReason.TOO_MANY_JOBS and refused.remaining == 4
    assert [s for s in statements if any(t in s for t in tables)] == reads, statements
    assert (status.used, status.queued, status.running) == (0, 1, 0)
    await ledger.mark_running(old.job.id)
    status = await ledger.user_status(GUILD, USER)
    assert (status.used, status.queued, status.running) == (0, 0, 1)
    await ledger.mark_done(old.job.id)
    assert (await ledger.reserve(req(image_count=4))).accepted


async def test_overrides_unlimited_and_blocked(make_ledger: LedgerFactory) -> None:
    ledger = make_ledger(QuotaPolicy(daily_images=1, max_queued_per_user=99))
    await ledger.set_user_quota(GUILD, USER, None, by=MODERATOR)
    for _ in range(3):
        r = await ledger.reserve(req(image_count=4))
        assert r.accepted and r.limit is None and r.remaining is None
    await ledger.block_user(GUILD, USER, by=MODERATOR, reason="spam")
    blocked = await ledger.reserve(req())
    assert blocked.reason is RefusalReason.USER_BLOCKED and blocked.retry_at is None
    await ledger.set_user_quota(GUILD, USER, 14, by=MODERATOR)
    assert (await ledger.reserve(req(image_count=2))).accepted  # 12 + 2 <= 14
    assert (await ledger.reserve(req())).reason == RefusalReason.QUOTA


async def test_quotas_are_per_guild_with_per_guild_policies(
    make_ledger: LedgerFactory,
) -> None:
    ledger = make_ledger(
        QuotaPolicy(daily_images=1, max_queued_per_user=9),
        guild_policies={OTHER_GUILD: QuotaPolicy(daily_images=3, max_queued_per_user=9)},
    )
    assert (await ledger.reserve(req())).accepted
    assert not (await ledger.reserve(req())).accepted
    assert (await ledger.reserve(req(guild_id=OTHER_GUILD, image_count=3))).accepted
    assert (await ledger.user_status(OTHER_GUILD, USER)).limit == 3


async def test_daily_zero_policy_refuses_unless_overridden(make_ledger: LedgerFactory) -> None:
    ledger = make_ledger(QuotaPolicy(daily_images=0))
    r = await ledger.reserve(req())
    assert (r.reason, r.retry_at) == (RefusalReason.QUOTA, None)
    await ledger.set_user_quota(GUILD, USER, 2, by=MODERATOR)
    assert (await ledger.reserve(req())).accepted


async def test_invalid_requests_are_rejected_before_storing(ledger: Ledger) -> None:
    with pytest.raises(ValueError, match="image_count"):
        await ledger.reserve(req(image_count=0))
    with pytest.raises(ValueError, match="seed"):
        await ledger.reserve(req(seed=2**63))
    assert await _jobs(ledger) == 0


async def test_record_refusal_stores_reason_without_taking_images(ledger: Ledger) -> None:
    job = await ledger.record_refusal(req(image_count=4), RefusalReason.BLOCKED_WORD, "word: x")
    assert job.status is JobStatus.REFUSED and job.refusal_reason is RefusalReason.BLOCKED_WORD
    assert job.error == "word: x" and job.finished_at == job.queued_at
    assert (await ledger.user_status(GUILD, USER)).used == 0


async def test_reroll_points_at_its_parent(ledger: Ledger) -> None:
    parent = await ledger.reserve(req())
    child = await ledger.reserve(req(reroll_of=parent.job.id, seed=7))
    assert child.job.request.reroll_of == parent.job.id


async def test_50_concurrent_reservations_for_10_images_left(make_ledger: LedgerFactory) -> None:
    """Separate sessions racing: the lock must let exactly the first 10 through."""
    ledger = make_ledger(QuotaPolicy(daily_images=13, max_queued_per_user=1000))
    assert (await ledger.reserve(req(image_count=3))).accepted  # 10 left
    results = await asyncio.gather(*(ledger.reserve(req()) for _ in range(50)))
    assert sum(r.accepted for r in results) == 10
    assert {r.reason for r in results if not r.accepted} == {RefusalReason.QUOTA}
    assert await _jobs(ledger, JobStatus.QUEUED) == 11
    assert await _jobs(ledger, JobStatus.REFUSED) == 40
    assert (await ledger.user_status(GUILD, USER)).used == 13


async def test_a_reservation_is_written_before_the_writes_waiting_with_it(
    ledger: Ledger,
) -> None:
    """While the writer is busy, a reservation (urgent: someone waits for "queued") that came
    after other writes is written in the next group, before them; they follow."""
    from sqlalchemy import text

    from bot.ledger.transactions import Transactions

    tx = Transactions(ledger.engine)
    taken, release = asyncio.Event(), asyncio.Event()
    ran: list[str] = []

    async def hold(session: AsyncSession) -> None:
        taken.set()
        await release.wait()

    def plain(name: str) -> Any:
        async def work(session: AsyncSession) -> None:
            await session.execute(text("SELECT 1"))
            ran.append(name)

        return work

    async def reserve_like(session: AsyncSession, items: Sequence[str]) -> list[None]:
        ran.extend(items)
        return [None] * len(items)

    busy = asyncio.create_task(tx.write(hold))
    await taken.wait()  # the writer's group is this one write
    waiting = [asyncio.create_task(tx.write(plain(f"plain {n}"))) for n in range(3)]
    waiting.append(asyncio.create_task(tx.write_batch(reserve_like, "urgent", urgent=True)))
    await asyncio.sleep(0)  # all four wait for the writer
    release.set()
    await asyncio.gather(busy, *waiting)
    assert ran == ["urgent", "plain 0", "plain 1", "plain 2"]
    await tx.close()


async def test_a_burst_of_writes_is_committed_in_a_few_groups(
    make_ledger: LedgerFactory,
) -> None:
    """A burst of `/imagine`s: their reservations commit in groups (one transaction each),
    not one commit apiece on the single writer; a write that fails on its own fails alone,
    and the others of its group commit."""
    from sqlalchemy import event, update

    from bot.ledger.transactions import Transactions

    ledger = make_ledger(QuotaPolicy(daily_images=10, max_queued_per_user=10))
    commits = 0

    def counted(_connection: object) -> None:
        nonlocal commits
        commits += 1

    event.listen(ledger.engine.sync_engine, "commit", counted)
    results = await asyncio.gather(*(ledger.reserve(req(user_id=USER + n)) for n in range(300)))
    assert all(r.accepted for r in results) and await _jobs(ledger, JobStatus.QUEUED) == 300
    assert commits <= 10, commits  # 300 writes in a handful of groups

    tx = Transactions(ledger.engine)
    first = results[0].job.id

    async def fails(session: AsyncSession) -> None:
        await session.execute(update(Job).where(Job.id == first).values(status="failed"))
        raise RuntimeError("this write's own mistake")

    async def marks(session: AsyncSession) -> int:
        result: Any = await session.execute(
            update(Job).where(Job.id == results[1].job.id).values(status="running")
        )
        return int(result.rowcount)

    outcomes = await asyncio.gather(tx.write(fails), tx.write(marks), return_exceptions=True)
    assert isinstance(outcomes[0], RuntimeError) and outcomes[1] == 1
    assert (await ledger.get_job(first)).status is JobStatus.QUEUED  # rolled back alone
    assert (await ledger.get_job(results[1].job.id)).status is JobStatus.RUNNING
    await tx.close()


async def test_a_burst_of_reservations_is_one_batch_of_few_statements(
    make_ledger: LedgerFactory,
) -> None:
    """Reservations waiting for the writer together are made together: a few statements for
    the lot, not a few each, and no savepoint while every write succeeds; each gets the
    answer it would get alone, in turn (blocked, unlimited, over quota, too many jobs, another
    guild); one that fails (a reroll of a job that does not exist) fails alone."""
    from sqlalchemy import event

    ledger = make_ledger(QuotaPolicy(daily_images=3, max_queued_per_user=2))
    await ledger.block_user(GUILD, OTHER_USER, by=MODERATOR, reason="spam")
    unlimited, greedy = USER + 100, USER + 101
    await ledger.set_user_quota(GUILD, unlimited, None, by=MODERATOR)
    statements: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_rest: object) -> None:
        statements.append(statement)

    event.listen(ledger.engine.sync_engine, "before_cursor_execute", seen)
    asks = [req(), req(), req(), req(user_id=OTHER_USER)]
    asks += [req(user_id=unlimited, image_count=4) for _ in range(2)]
    asks += [req(user_id=greedy, image_count=4), req(guild_id=OTHER_GUILD)]
    asks += [req(user_id=USER + 200 + n) for n in range(20)]
    results = await asyncio.gather(*(ledger.reserve(r) for r in asks))
    event.remove(ledger.engine.sync_engine, "before_cursor_execute", seen)
    quota, too_many = RefusalReason.QUOTA, RefusalReason.TOO_MANY_JOBS
    blocked = RefusalReason.USER_BLOCKED
    reasons = [None, None, too_many, blocked, None, None, quota, None]
    assert [r.reason for r in results[:8]] == reasons
    assert [r.remaining for r in results[:3]] == [2, 1, 1] and results[4].remaining is None
    assert all(r.accepted and r.remaining == 2 for r in results[8:])
    assert len(statements) < len(asks), statements  # alone, each takes 5
    assert not [s for s in statements if "SAVEPOINT" in s.upper()]

    good = [req(user_id=USER + 300 + n) for n in range(5)]
    outcomes = await asyncio.gather(
        *(ledger.reserve(r) for r in [*good[:2], req(reroll_of=10**9), *good[2:]]),
        return_exceptions=True,
    )
    assert isinstance(outcomes[2], IntegrityError)
    assert all(o.accepted for o in outcomes if not isinstance(o, BaseException))
    assert await _jobs(ledger) == len(asks) + len(good)


async def test_a_burst_of_reads_leaves_the_writer_a_connection(ledger: Ledger) -> None:
    """Reads hold at most `READS_AT_ONCE` pooled connections: a reservation made while twenty
    reads are under way, each holding its connection, does not queue behind them (it would
    wait for the pool's timeout, 30 s)."""
    from sqlalchemy import text

    from bot.ledger.transactions import READS_AT_ONCE, Transactions

    tx = Transactions(ledger.engine)
    release, enough = asyncio.Event(), asyncio.Event()
    holding = 0

    async def hold(session: AsyncSession) -> None:
        nonlocal holding
        await session.execute(text("SELECT 1"))
        holding += 1
        if holding >= READS_AT_ONCE:
            enough.set()
        await release.wait()

    reads = [asyncio.create_task(tx.read(hold)) for _ in range(20)]
    await enough.wait()
    reserved = await asyncio.wait_for(ledger.reserve(req()), 10)
    assert reserved.accepted and holding == READS_AT_ONCE
    release.set()
    await asyncio.gather(*reads)
    assert holding == 20
    await tx.close()


async def test_concurrent_reservations_respect_the_in_flight_limit(
    make_ledger: LedgerFactory,
) -> None:
    ledger = make_ledger(QuotaPolicy(daily_images=1000, max_queued_per_user=3))
    results = await asyncio.gather(*(ledger.reserve(req()) for _ in range(20)))
    assert sum(r.accepted for r in results) == 3
    assert await _jobs(ledger, JobStatus.QUEUED) == 3


async def test_concurrent_reservations_from_two_ledgers(
    make_ledger: LedgerFactory, db_url: str, clock: FakeClock
) -> None:
    """Two processes' worth of engines (own pools) on one database still serialize."""
    from bot.ledger import create_engine

    policy = QuotaPolicy(daily_images=10, max_queued_per_user=1000)
    first = make_ledger(policy)
    other_engine = create_engine(db_url)
    try:
        second = Ledger(other_engine, policy, clock=clock)
        results = await asyncio.gather(
            *(ledger.reserve(req()) for _ in range(15) for ledger in (first, second))
        )
    finally:
        await other_engine.dispose()
    assert sum(r.accepted for r in results) == 10


async def test_a_huge_refused_prompt_is_not_stored_whole(ledger: Ledger) -> None:
    """A forged prompt of any size costs the database a bounded row."""
    huge = "a" * 3_000_000
    job = await ledger.record_refusal(
        req(prompt=huge, negative_prompt=huge), RefusalReason.INVALID, "too long"
    )
    stored = await ledger.get_job(job.id)
    assert stored is not None and stored.status is JobStatus.REFUSED
    assert stored.request.prompt == huge[:2000] and stored.request.negative_prompt == huge[:2000]


ROOT = Path(__file__).resolve().parents[2]
#: One bot process's share of a reservation race (`python -c`): open the ledger, say "ready",
#: wait for "go" on stdin, reserve `n` images at once, print how many were accepted.
RACER = """
import asyncio, sys
from bot.ledger import QuotaPolicy, open_ledger
from tests.ledger.conftest import make_request

async def main(url: str, n: int) -> None:
    policy = QuotaPolicy(daily_images=10, max_queued_per_user=1000)
    async with open_ledger(url, policy, migrate=False) as ledger:
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        results = await asyncio.gather(*(ledger.reserve(make_request()) for _ in range(n)))
        print(sum(r.accepted for r in results), flush=True)

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


async def test_50_concurrent_reservations_from_two_processes(
    make_ledger: LedgerFactory, db_url: str
) -> None:
    """Two bot processes (shards) on one database: 25 reservations each, at the same moment,
    for a user with 10 images left. Exactly 10 are accepted across both."""
    ledger = make_ledger(QuotaPolicy(daily_images=10, max_queued_per_user=1000))  # empties it
    racers = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            RACER,
            db_url,
            "25",
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for _ in range(2)
    ]
    for racer in racers:
        assert racer.stdout is not None
        assert (await asyncio.wait_for(racer.stdout.readline(), 60)).strip() == b"ready"
    for racer in racers:
        assert racer.stdin is not None
        racer.stdin.write(b"go\n")
        await racer.stdin.drain()
    accepted = []
    for racer in racers:
        out, _ = await asyncio.wait_for(racer.communicate(), 120)
        assert racer.returncode == 0
        accepted.append(int(out.split()[-1]))
    assert sum(accepted) == 10
    assert await _jobs(ledger, JobStatus.QUEUED) == 10
    assert await _jobs(ledger, JobStatus.REFUSED) == 40
    assert (await ledger.user_status(GUILD, USER)).used == 10
