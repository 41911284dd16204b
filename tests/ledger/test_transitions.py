"""Status transitions: legal moves change the job, illegal ones change nothing."""

from __future__ import annotations

import asyncio
import shutil
from datetime import timedelta
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.ledger import (
    ACTIVE_STATUSES,
    JobRecord,
    JobStatus,
    Ledger,
    QuotaPolicy,
    RefusalReason,
    create_engine,
)

from .conftest import FakeClock
from .conftest import make_request as req


async def _queued(ledger: Ledger) -> JobRecord:
    r = await ledger.reserve(req())
    assert r.accepted
    return r.job


async def _get(ledger: Ledger, job_id: int) -> JobRecord:
    job = await ledger.get_job(job_id)
    assert job is not None
    return job


async def test_happy_path(ledger: Ledger, clock: FakeClock) -> None:
    job = await _queued(ledger)
    clock.advance(seconds=5)
    assert await ledger.mark_running(job.id)
    assert await ledger.set_message(job.id, 777)
    clock.advance(seconds=10)
    assert await ledger.mark_done(job.id)
    done = await _get(ledger, job.id)
    assert done.status is JobStatus.DONE and not done.delivered
    assert done.request.interaction_token is None  # the secret is forgotten when the job ends
    assert done.started_at == job.queued_at + timedelta(seconds=5)
    assert done.finished_at == clock.now and done.message_id == 777


async def test_mark_done_with_message_means_delivered(ledger: Ledger) -> None:
    job = await _queued(ledger)
    await ledger.mark_running(job.id)
    assert await ledger.mark_done(job.id, message_id=4242)
    done = await _get(ledger, job.id)
    assert done.delivered and done.message_id == 4242


async def test_illegal_transitions_change_nothing(ledger: Ledger) -> None:
    job = await _queued(ledger)
    await ledger.mark_running(job.id)
    assert not await ledger.mark_running(job.id)
    assert not await ledger.refuse(job.id, RefusalReason.QUEUE_FULL)  # already running
    await ledger.mark_done(job.id)
    before = await _get(ledger, job.id)
    assert not await ledger.mark_running(job.id)
    assert not await ledger.mark_failed(job.id, "late error")
    assert not await ledger.mark_cancelled(job.id)
    assert not await ledger.mark_done(job.id, message_id=1)
    assert await _get(ledger, job.id) == before


async def test_unknown_job_is_a_no_op(ledger: Ledger) -> None:
    assert await ledger.get_job(12345) is None
    assert not await ledger.mark_running(12345)
    assert not await ledger.set_message(12345, 1)


async def test_a_burst_of_progress_messages_is_one_update(ledger: Ledger) -> None:
    """A burst's progress messages are recorded by one statement, whatever their number (a
    job named twice keeps the last, an unknown one is False), snowflakes whole."""
    from sqlalchemy import event

    jobs = [(await ledger.reserve(req(user_id=9_000 + n))).job for n in range(40)]
    statements: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_rest: object) -> None:
        statements.append(statement)

    event.listen(ledger.engine.sync_engine, "before_cursor_execute", seen)
    snowflake = 1_400_000_000_000_000_000
    calls = [(job.id, snowflake + n) for n, job in enumerate(jobs)]
    calls += [(jobs[0].id, snowflake - 1), (12345, 1)]
    results = await asyncio.gather(*(ledger.set_message(j, m) for j, m in calls))
    event.remove(ledger.engine.sync_engine, "before_cursor_execute", seen)
    assert results == [True] * 41 + [False]
    assert len([s for s in statements if s.lstrip().upper().startswith("UPDATE")]) == 1
    assert (await _get(ledger, jobs[0].id)).message_id == snowflake - 1
    assert (await _get(ledger, jobs[39].id)).message_id == snowflake + 39


async def test_failure_keeps_a_bounded_error(ledger: Ledger) -> None:
    job = await _queued(ledger)
    assert await ledger.mark_failed(job.id, "x" * 10_000)
    failed = await _get(ledger, job.id)
    assert failed.status is JobStatus.FAILED and failed.error == "x" * 2000
    assert failed.request.interaction_token is None and failed.finished_at is not None
    assert not await ledger.mark_running(job.id)


async def test_refuse_a_queued_job(ledger: Ledger) -> None:
    job = await _queued(ledger)
    assert await ledger.refuse(job.id, RefusalReason.QUEUE_FULL, "64 waiting")
    refused = await _get(ledger, job.id)
    assert refused.status is JobStatus.REFUSED
    assert refused.refusal_reason is RefusalReason.QUEUE_FULL and refused.error == "64 waiting"


async def test_concurrent_completions_succeed_once(ledger: Ledger) -> None:
    job = await _queued(ledger)
    claims = await asyncio.gather(*(ledger.mark_done(job.id, message_id=n) for n in range(10)))
    assert sorted(claims) == [False] * 9 + [True]
    done = await _get(ledger, job.id)
    assert done.delivered and done.message_id == claims.index(True)


async def test_a_burst_of_transitions_is_decided_in_turn_in_a_few_statements(
    ledger: Ledger,
) -> None:
    """Status changes waiting for the writer together give the answers they would give one
    after the other, in their order (each sees what those before it did), in one read of the
    jobs and an UPDATE per set of columns changed, not a statement each."""
    from sqlalchemy import event

    first, second, third = [(await ledger.reserve(req(user_id=9_100 + n))).job for n in range(3)]
    calls = [(first.id, "running"), (first.id, "cancelled"), (first.id, "done")]
    calls += [(second.id, "posted"), (second.id, "posted"), (second.id, "failed")]
    calls += [(third.id, "refused"), (third.id, "running"), (10**9, "running")]
    statements: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_rest: object) -> None:
        statements.append(statement.lstrip().upper())

    event.listen(ledger.engine.sync_engine, "before_cursor_execute", seen)
    results = await asyncio.gather(*(_apply(ledger, job, op) for job, op in calls))
    event.remove(ledger.engine.sync_engine, "before_cursor_execute", seen)
    assert results == [True, True, False, True, False, False, True, False, False]
    assert len([s for s in statements if s.startswith("SELECT")]) == 1, statements
    assert len([s for s in statements if s.startswith("UPDATE")]) == 3, statements
    cancelled, posted, refused = [await _get(ledger, job.id) for job in (first, second, third)]
    assert cancelled.status is JobStatus.CANCELLED and cancelled.started_at is not None
    assert cancelled.finished_at is not None and cancelled.request.interaction_token is None
    assert posted.status is JobStatus.DONE and posted.message_id == 99 and posted.delivered
    assert refused.status is JobStatus.REFUSED and refused.started_at is None


# Every call, and the statuses it may move a job from ("posted": done with its message).
ALLOWED: dict[str, set[JobStatus]] = {
    "running": {JobStatus.QUEUED},
    "done": {JobStatus.QUEUED, JobStatus.RUNNING},
    "posted": {JobStatus.QUEUED, JobStatus.RUNNING},
    "failed": {JobStatus.QUEUED, JobStatus.RUNNING},
    "cancelled": {JobStatus.QUEUED, JobStatus.RUNNING},
    "refused": {JobStatus.QUEUED},
}


async def _apply(ledger: Ledger, job_id: int, op: str) -> bool:
    if op == "running":
        return await ledger.mark_running(job_id)
    if op == "done":
        return await ledger.mark_done(job_id)
    if op == "failed":
        return await ledger.mark_failed(job_id, "boom")
    if op == "cancelled":
        return await ledger.mark_cancelled(job_id)
    if op == "posted":
        return await ledger.mark_done(job_id, message_id=99)
    return await ledger.refuse(job_id, RefusalReason.QUEUE_FULL)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=st.lists(st.sampled_from(list(ALLOWED)), min_size=1, max_size=8))
def test_any_sequence_of_calls_follows_the_state_machine(
    ops: list[str], sqlite_template: Path, tmp_path: Path
) -> None:
    """Against a model of the state machine, on a real SQLite file (one job per example)."""
    path = tmp_path / "machine.db"
    if not path.exists():
        shutil.copyfile(sqlite_template, path)

    async def run() -> None:
        engine = create_engine(f"sqlite+aiosqlite:///{path}")
        try:
            ledger = Ledger(engine, QuotaPolicy(daily_images=10**6, max_queued_per_user=10**6))
            job = await _queued(ledger)
            status, delivered = JobStatus.QUEUED, False
            for op in ops:
                expected = status in ALLOWED[op]
                if expected:
                    status = JobStatus.DONE if op == "posted" else JobStatus(op)
                    delivered = op == "posted"
                assert await _apply(ledger, job.id, op) == expected, (ops, op)
                now = await _get(ledger, job.id)
                assert (now.status, now.delivered) == (status, delivered)
                forgotten = now.request.interaction_token is None
                assert forgotten == (status not in ACTIVE_STATUSES)
        finally:
            await engine.dispose()

    asyncio.run(run())


async def test_refund_images_gives_back_withheld_images_of_a_done_job(ledger: Ledger) -> None:
    job = await ledger.reserve(req(image_count=3))
    assert job.accepted
    assert not await ledger.refund_images(job.job.id, 1)  # not done yet: nothing to give back
    await ledger.mark_done(job.job.id, message_id=5)
    assert await ledger.refund_images(job.job.id, 2)
    assert not await ledger.refund_images(job.job.id, 2)  # only one image is still counted
    status = await ledger.user_status(job.job.request.guild_id, job.job.request.user_id)
    assert status.used == 1
    assert (await _get(ledger, job.job.id)).request.image_count == 1


async def test_a_delivery_start_is_recorded_and_survives_a_requeue(
    ledger: Ledger, clock: FakeClock
) -> None:
    job = await _queued(ledger)
    await ledger.mark_running(job.id)
    assert (await _get(ledger, job.id)).delivery_started_at is None
    clock.advance(seconds=3)
    assert await ledger.start_delivery(job.id)
    started = await _get(ledger, job.id)
    assert started.delivery_started_at == clock.now and not started.delivered
    # The process dies here: the re-queued job still says a post may exist.
    (requeued,) = await ledger.requeue_interrupted()
    assert requeued.status is JobStatus.QUEUED and requeued.delivery_started_at == clock.now
    assert await ledger.mark_done(job.id, message_id=55)
    assert not await ledger.start_delivery(job.id)  # ended jobs are not delivered again


async def test_a_fix_sets_its_final_price_when_its_delivery_starts(
    ledger: Ledger, clock: FakeClock
) -> None:
    """`/imagine fix:` reserves each image's fix; when the result is about to be posted the
    job's price is set (`pricing.delivered_price`: no fix for an image where nothing was
    found). An absolute price: a second delivery start after a restart sets the same."""
    from dataclasses import replace

    from bot.config import ImagesSettings
    from bot.jobs.pricing import delivered_price, price, refund
    from engine import GeneratedImage

    asked = replace(req(), fix="faces", images_asked=2)
    asked = replace(asked, image_count=price(asked.kind, 2, ImagesSettings(), fix=1))
    reservation = await ledger.reserve(asked)
    assert reservation.accepted and reservation.job.request.image_count == 4  # 2 + 2 fixes
    job = reservation.job
    made = [GeneratedImage(b"", 1, 0, 64, 64, fixed=("faces",)), GeneratedImage(b"", 2, 1, 64, 64)]
    charge = delivered_price(job, made, ImagesSettings(), 1)
    assert charge == 3  # two images, one fix: the second image had no face
    await ledger.mark_running(job.id)
    assert await ledger.start_delivery(job.id, charge=charge)
    (requeued,) = await ledger.requeue_interrupted()  # the bot died before posting
    assert requeued.request.image_count == 3 and requeued.request.fix == "faces"
    assert await ledger.start_delivery(job.id, charge=charge)  # posted again: the same price
    assert await ledger.mark_done(job.id, message_id=56)
    done = await _get(ledger, job.id)
    assert done.request.image_count == 3 and refund(done, 2, ImagesSettings()) == 0
    status = await ledger.user_status(job.request.guild_id, job.request.user_id)
    assert status.used == 3
