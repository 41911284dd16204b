"""Restart safety: a bot killed mid-job (SIGKILL) and started again delivers every job
exactly once or gives its images back, and the database says which; SIGTERM stops cleanly.

The model here is `builtin:tiny-flagging`, whose safety checker flags every image, with
`flagged_images = "spoiler"`: every delivery in this module is also a check that flagged
images are posted as spoilers.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
import pytest_asyncio
from sqlalchemy import update

from bot.ledger import ACTIVE_STATUSES, JobRecord, JobStatus, Ledger
from bot.ledger.models import Job
from engine import read_parameters
from testkit.discord_server import DEFAULT_BOT_PERMISSIONS, DEFAULT_MEMBER_PERMISSIONS, User
from testkit.discord_server.flags import SEND_MESSAGES
from testkit.jobs import (
    JOB_TIMEOUT,
    button_id,
    job_of,
    read_ledger,
    result_of,
    wait_result,
)
from testkit.process import BotProcess
from testkit.world import NewWorld, World

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(new_world: NewWorld) -> AsyncIterator[World]:
    """Two guilds: #art in "Art Club", and #gallery in "Quiet Club", where nobody may post,
    the bot neither. The tests start and stop the bot themselves."""
    async with new_world(users=("alice", "bob", "carol")) as world:
        quiet = world.add_guild(
            "quiet",
            "Quiet Club",
            bot_permissions=DEFAULT_BOT_PERMISSIONS & ~SEND_MESSAGES,
            everyone_permissions=DEFAULT_MEMBER_PERMISSIONS & ~SEND_MESSAGES,
        )
        world.add_channel("gallery", guild=quiet).bot_can_send = False
        world.configure(
            guild_ids=[world.guild.id, quiet.id],
            engine={"model": "builtin:tiny-flagging"},
            moderation={"flagged_images": "spoiler"},
        )
        world.delivered = {}  # results, by test name
        yield world


async def test_a_killed_bot_delivers_every_job_once_or_refunds_it(world: World) -> None:
    server = world.server
    bot = await world.start_bot()
    # A: a long job, running when the bot dies; its token stays valid: answered through it.
    a_id, a_progress = await world.imagine(world.alice, "a storm", steps=30)
    # B and C wait behind A. They will look 20 minutes old at restart: their tokens are
    # given up. C is posted to its channel; B's channel does not let the bot post: refunded.
    c_id, _ = await world.imagine(world.bob, "a calm sea")
    b_id, _ = await world.imagine(world.carol, "a quiet room", channel=world.gallery)
    bot.unwatch()
    bot.process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
    assert await bot.exited() == -signal.SIGKILL

    async with read_ledger(world.tmp) as ledger:
        for job_id in (a_id, b_id, c_id):
            assert (await job_of(ledger, job_id)).status in ACTIVE_STATUSES
        # Simulate the bot having been down for 20 minutes for B and C.
        old = ledger.now() - timedelta(minutes=20)
        async with ledger.engine.begin() as conn:
            await conn.execute(update(Job).where(Job.id.in_([b_id, c_id])).values(queued_at=old))
    assert not world.results_for(a_id) + world.results_for(b_id) + world.results_for(c_id)

    bot = await world.start_bot()
    try:
        assert a_progress.interaction is not None
        a_result = await wait_result(a_progress.interaction)
        c_result = await server.wait_for_message(
            world.art,
            lambda m: m.interaction is None and bool(m.attachments),
            timeout=JOB_TIMEOUT,
        )
        await bot.wait_for_line(rf"job {b_id}: cannot post the result", within=JOB_TIMEOUT)
    finally:
        assert await bot.stop() == 0, bot.output[-3000:]

    world.delivered["a"] = a_result
    assert a_result.pinged_user_ids == {world.alice.id}
    assert c_result.content.startswith(world.bob.mention)
    assert c_result.pinged_user_ids == {world.bob.id}
    assert [len(world.results_for(j)) for j in (a_id, b_id, c_id)] == [1, 0, 1]
    assert not [m for m in server.messages_in(world.gallery) if not m.ephemeral]
    for result in (a_result, c_result):  # flagged images are spoilers, named SPOILER_
        assert result.attachments and all(a.spoiler for a in result.attachments)
        assert all(a.filename.startswith("SPOILER_imagine-") for a in result.attachments)
        assert "hidden as spoilers" in result.embeds[0]["footer"]["text"]
    params = read_parameters(a_result.attachments[0].data)
    assert params is not None and params.prompt == "a storm" and params.steps == 30
    assert a_progress.edit_count >= 1 and a_progress.history  # was resumed in place
    assert any("Resumed after a restart" in v.content for v in a_progress.history)

    async with read_ledger(world.tmp) as ledger:
        a, b, c = [await job_of(ledger, j) for j in (a_id, b_id, c_id)]
        assert (a.status, a.message_id) == (JobStatus.DONE, a_result.id)
        assert (c.status, c.message_id) == (JobStatus.DONE, c_result.id)
        assert b.status is JobStatus.FAILED and "restart" in (b.error or "")
        carol = await ledger.user_status(world.quiet.id, world.carol.id)
        assert carol.used == 0  # B's image was given back
        alice = await ledger.user_status(world.guild.id, world.alice.id)
        assert alice.used == 1  # A counted once, not twice


async def test_buttons_work_after_a_restart_and_sigterm_keeps_unfinished_jobs(
    world: World,
) -> None:
    server = world.server
    bot = await world.start_bot()
    # A result posted by the previous process: its buttons are resolved through the database.
    a_result = world.delivered["a"]
    refused = await server.click(a_result, button_id(a_result, "delete"), user=world.bob)
    note = await refused.wait_for_message(lambda m: m is not a_result)  # a private followup
    assert note.ephemeral and "Only the person who asked" in note.content
    deleted = await server.click(a_result, button_id(a_result, "delete"), user=world.alice)
    await deleted.wait_for(lambda _: a_result.deleted, what="the result to be deleted")

    job_id, progress = await world.imagine(world.alice, "a long wait", steps=30)
    assert await bot.stop(signal.SIGTERM, within=60) == 0, bot.output[-3000:]
    assert "stopped" in bot.output
    assert progress.interaction is not None
    assert result_of(progress.interaction) is None
    await progress.interaction.wait_for_original(lambda m: "restarting" in m.content)
    async with read_ledger(world.tmp) as ledger:
        job = await job_of(ledger, job_id)
        # Not failed, not refunded: the next start runs it again.
        assert job.status in ACTIVE_STATUSES and job.request.interaction_token is not None


#: Members sending a burst of /imagine, and how many each sends: a deep queue.
BURST_USERS, BURST_EACH = 10, 20
#: Jobs queued (their progress message shown) when the stop comes; the rest of the burst is
#: still being queued.
QUEUED_AT_STOP = 20
#: A stop under load ends within this, whatever the queue's length: the bot waits 1 s for
#: requests being queued, and a second or two to exit (the deployment gives 60 s; before
#: the stop left the queue alone, this burst took 7 to 8 s here).
STOP_UNDER_LOAD = 6.0


async def _stop_timed(bot: BotProcess) -> float:
    """SIGTERM; the seconds until the bot exited, with status 0."""
    loop = asyncio.get_running_loop()
    bot.unwatch()
    assert bot.process is not None
    bot.process.send_signal(signal.SIGTERM)
    signalled = loop.time()
    assert await bot.exited(60) == 0, bot.output[-3000:]
    return loop.time() - signalled


async def test_sigterm_under_a_deep_queue_stops_in_time_and_loses_nothing(world: World) -> None:
    """A burst of 200 /imagine, stopped while most are still being queued, then again once
    the next start has taken them all back: each stop ends within `STOP_UNDER_LOAD`; every
    job is kept for the next start and counted once, and what is delivered is posted once."""
    server = world.server
    users = [world.add_user(f"crowd{n}") for n in range(BURST_USERS)]
    world.configure(
        guild_ids=[world.guild.id, world.quiet.id],
        engine={"model": "builtin:tiny-flagging", "max_queue": 1024},
        moderation={"flagged_images": "spoiler", "commands_per_minute": 0},
        quota={"daily_images": 1000, "max_queued_per_user": BURST_EACH},
    )
    bot = await world.start_bot()
    asked = [
        await server.invoke(
            "imagine",
            user=user,
            channel=world.art,
            options={"prompt": f"a crowd {n}", "steps": 8, "seed": n},
        )
        for n in range(BURST_EACH)
        for user in users
    ]

    def queued() -> int:
        return sum(1 for i in asked if i.original is not None and i.original.custom_ids)

    await server.wait_until(
        lambda: queued() >= QUEUED_AT_STOP, timeout=JOB_TIMEOUT, what="a deep queue"
    )
    took = await _stop_timed(bot)
    assert took < STOP_UNDER_LOAD, f"stopped in {took:.1f} s\n" + bot.output[-3000:]
    assert not (world.tmp / "imagine.db-journal").exists()  # no write was cut off
    async with read_ledger(world.tmp) as ledger:
        kept = {job.id: job.status for job in await _jobs_of(ledger, world, users)}
        active = len(await ledger.active_jobs())
    # Queued ones are kept for the next start: none failed nor refunded.
    assert len(kept) >= QUEUED_AT_STOP
    assert set(kept.values()) <= {*ACTIVE_STATUSES, JobStatus.DONE}, kept

    # The next start takes every kept job back; stopped again under that deep queue.
    bot = await world.start_bot()
    line = await bot.wait_for_line(r"recovered \d+ job\(s\):", within=JOB_TIMEOUT)
    assert f"recovered {active} job(s):" in line
    # One of the burst's (the earlier test's job left queued is older and may come first).
    burst = "|".join(str(job_id) for job_id in kept)
    await bot.wait_for_line(rf"job (?:{burst}): delivered", within=JOB_TIMEOUT)
    took = await _stop_timed(bot)
    assert took < STOP_UNDER_LOAD, f"stopped in {took:.1f} s\n" + bot.output[-3000:]

    async with read_ledger(world.tmp) as ledger:
        jobs = await _jobs_of(ledger, world, users)
        assert {job.id for job in jobs} == set(kept)  # nothing admitted twice, nothing lost
        for job in jobs:
            posted = world.results_for(job.id)
            if job.status is JobStatus.DONE:
                assert [m.id for m in posted] == [job.message_id]  # delivered once
            else:  # left for the next start: neither failed nor refunded, never posted
                assert job.status in ACTIVE_STATUSES and posted == [], job
        assert any(job.status is JobStatus.DONE for job in jobs)
        for user in users:
            status = await ledger.user_status(world.guild.id, user.id)
            mine = [job for job in jobs if job.request.user_id == user.id]
            assert status.used == len(mine)  # each counted once, across both stops


async def _jobs_of(ledger: Ledger, world: World, users: list[User]) -> list[JobRecord]:
    return [
        job
        for user in users
        for job in await ledger.jobs_for_user(world.guild.id, user.id, limit=BURST_EACH + 1)
    ]
