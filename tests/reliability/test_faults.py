"""Faults end to end: the real `imagine-bot run` against the Discord test server, one bot for
the module, each fault injected while a job runs. Every job ends delivered exactly once, or
failed alone with its images given back; the database is read back with the ledger's code.

No GPU here, so GPU faults are simulated inside the bot process by `fault_hooks/sitecustomize.py`
(loaded through `PYTHONPATH`, test-only): pre-hooks on the real pipeline raise the out-of-memory
error a small GPU would, and a file gate parks a job in the UNet so a fault lands mid-run.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import signal
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from bot.ledger import ACTIVE_STATUSES, JobKind, JobStatus
from testkit.discord_server import Failure, Interaction, Message
from testkit.jobs import (
    JOB_TIMEOUT,
    button_id,
    job_id_of,
    job_of,
    read_ledger,
    result_of,
    wait_result,
)
from testkit.process import run_once
from testkit.world import NewWorld, World

from .fault_hooks.sitecustomize import (
    FAIL_DONE,
    FLAGGED_SEED,
    HOLD,
    HOLD_POST,
    IMMUTABLE_BEFORE_DONE,
    KILL_BEFORE_DONE,
    NAN_SEED,
    POISON,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

HOOKS = Path(__file__).with_name("fault_hooks")
#: How long another writer holds SQLite's write lock (under the bot's 5 s busy timeout).
LOCK_SECONDS = 2.0
#: A SIGTERM must end the process within this many seconds (the engine's own grace is 60 s).
STOP_WITHIN = 20.0


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(new_world: NewWorld) -> AsyncIterator[World]:
    """Seven users in #art; the bot runs with the fault hooks (`start_bot` starts it again).
    Flagged images (only seed `FLAGGED_SEED`'s, see the hooks) are withheld in #art."""
    users = ("alice", "bob", "carol", "dave", "erin", "frank", "gwen")
    async with new_world(users=users) as world:
        world.configure(moderation={"flagged_images": "refuse_outside_nsfw"})
        async with world.running_bot(pythonpath=[HOOKS]):
            try:
                yield world
            finally:
                (world.tmp / HOLD).unlink(missing_ok=True)


@pytest.fixture(autouse=True)
def bot_output_on_failure(world: World) -> Iterator[None]:
    """The bot's log lines of each test, shown by pytest when the test fails."""
    start = len(world.bot.lines)
    bot = world.bot
    yield
    if world.bot is bot:  # a restarted bot's whole output is new
        print("bot output during the test:\n" + "\n".join(bot.lines[start:]))
    else:
        print("bot output since the restart:\n" + "\n".join(world.bot.lines))


async def start_bot(world: World) -> None:
    """`imagine-bot run` again, with the fault hooks on its `PYTHONPATH`."""
    await world.start_bot(pythonpath=[HOOKS])


@contextlib.contextmanager
def parked(world: World) -> Iterator[None]:
    """Jobs that reach the UNet wait there until the block ends."""
    gate = world.tmp / HOLD
    gate.touch()
    try:
        yield
    finally:
        gate.unlink(missing_ok=True)


async def running(progress: Message) -> None:
    """The job is on the worker (parked in the UNet while `parked` lasts)."""
    await interaction_of(progress).wait_for_original(lambda m: "being made" in m.content)


def interaction_of(progress: Message) -> Interaction:
    assert progress.interaction is not None
    return progress.interaction


async def assert_delivered_once(world: World, job_id: int, result: Message) -> None:
    """Posted once, then marked done (the result is posted first, so await the mark)."""
    await world.bot.wait_for_line(rf"job {job_id}: delivered", within=30)
    assert world.results_for(job_id) == [result]
    async with read_ledger(world.tmp) as ledger:
        job = await job_of(ledger, job_id)
        assert (job.status, job.message_id) == (JobStatus.DONE, result.id)


async def test_429_then_500_on_the_result_followup_is_retried_and_delivered_once(
    world: World,
) -> None:
    with parked(world):
        job_id, progress = await world.imagine(world.alice, "a rate limited robot")
        await running(progress)
        interaction = interaction_of(progress)
        followups = rf"^/webhooks/\d+/{re.escape(interaction.token)}$"  # not the edits (PATCH)
        # discord.py waits `retry_after` after a 429 and 1 s after the first 500.
        injection = world.server.inject_failures(
            "POST", followups, [Failure(429, retry_after=0.5), 500]
        )
    result = await wait_result(interaction)
    assert [r.status for r in injection.hits] == [429, 500]
    posts = world.server.requests_to("POST", followups)
    assert [r.status for r in posts[-3:]] == [429, 500, 200]
    await assert_delivered_once(world, job_id, result)


async def test_a_gateway_drop_mid_job_reconnects_and_the_job_is_delivered_once(
    world: World,
) -> None:
    gateway = world.server.gateway
    with parked(world):
        job_id, progress = await world.imagine(world.bob, "a dropped connection")
        await running(progress)
        resumes, identifies = gateway.resume_count, gateway.identify_count
        await world.server.drop_gateway(abrupt=True)  # TCP reset, no close frame
        await world.server.wait_until(
            lambda: gateway.connected and gateway.resume_count > resumes,
            timeout=60,
            what="the bot to RESUME its session",
        )
        assert gateway.identify_count == identifies  # resumed, not a fresh session
    result = await wait_result(interaction_of(progress))
    await assert_delivered_once(world, job_id, result)

    # Discord may also refuse the resume (op 9, not resumable): a fresh IDENTIFY, same outcome.
    with parked(world):
        job_id, progress = await world.imagine(world.bob, "a new session")
        await running(progress)
        await world.server.invalidate_session(resumable=False)
        await world.server.wait_until(
            lambda: gateway.connected and gateway.identify_count > identifies,
            timeout=60,
            what="the bot to IDENTIFY again",
        )
    result = await wait_result(interaction_of(progress))
    await assert_delivered_once(world, job_id, result)


async def test_a_deleted_progress_message_does_not_stop_delivery(world: World) -> None:
    with parked(world):
        job_id, progress = await world.imagine(world.carol, "a vanishing message")
        await running(progress)
        await world.server.delete_message(world.art, progress)
    result = await wait_result(interaction_of(progress))
    await assert_delivered_once(world, job_id, result)
    # Its last edit ("done") met "Unknown Message" and was dropped quietly.
    edit = rf"/messages/{progress.id}$"
    gone = await world.server.wait_for_request("PATCH", edit, status=404)
    assert gone.response["code"] == 10008
    assert [r.status for r in world.server.requests_to("PATCH", edit)].count(404) == 1
    assert "Traceback" not in world.bot.output


async def test_out_of_memory_splits_the_batch_and_the_bad_request_fails_alone(
    world: World,
) -> None:
    with parked(world):
        _, blocker = await world.imagine(world.dave, "parked in the unet", steps=3)
        await running(blocker)
        # Queued behind the parked job, these four leave the queue as one batch. It runs out
        # of memory (the poisoned prompt) and is halved; the half without the poisoned prompt
        # is still too big for the "GPU" and is halved again; the poisoned one fails alone.
        asked = [
            await world.imagine(user, prompt)
            for user, prompt in (
                (world.alice, "a red fox"),
                (world.bob, "a blue jay"),
                (world.gwen, "a grey owl"),
                (world.carol, POISON),
            )
        ]
        assert all("is queued" in progress.content for _, progress in asked)
    *good, (bad_id, bad) = asked
    for job_id, progress in good:
        await assert_delivered_once(world, job_id, await wait_result(interaction_of(progress)))
    told = await interaction_of(bad).wait_for_original(lambda m: "failed" in m.content)
    assert "ran out of memory" in told.content and "given back" in told.content
    assert "Traceback" not in told.content and "OutOfMemoryError" not in told.content
    assert world.results_for(bad_id) == []
    assert "batch of 4 failed" in world.bot.output  # the batch really was split...
    assert "simulated out of memory for 4 UNet samples" in world.bot.output  # ...twice
    async with read_ledger(world.tmp) as ledger:
        job = await job_of(ledger, bad_id)
        assert job.status is JobStatus.FAILED and "memory" in (job.error or "")
        carol = await ledger.user_status(job.request.guild_id, world.carol.id)
        assert carol.used == 1  # her earlier job only: the poisoned one was refunded
        assert (carol.queued, carol.running) == (0, 0)


async def test_a_nan_image_is_never_posted_nor_charged(world: World) -> None:
    """An image whose numbers overflow (NaN latents: the hook starts the image of `NAN_SEED`
    from NaN noise inside the bot) would be black: it is left out and given back, the rest of
    its job delivered; a job with nothing else fails, refunded."""
    async with read_ledger(world.tmp) as ledger:
        used = (await ledger.user_status(world.guild.id, world.alice.id)).used
    # Two images, the second from NaN; guidance 1: one UNet sample per image, under the
    # hook's simulated memory limit.
    job_id, progress = await world.imagine(
        world.alice, "half a picture", seed=NAN_SEED - 1, count=2, guidance=1.0
    )
    result = await wait_result(interaction_of(progress))
    await assert_delivered_once(world, job_id, result)
    assert [a.filename.rsplit("-", 1)[1] for a in result.attachments] == [f"{NAN_SEED - 1}.png"]
    assert "1 image(s) came out blank" in result.content and "given back" in result.content
    async with read_ledger(world.tmp) as ledger:
        assert (await job_of(ledger, job_id)).request.image_count == 1  # the NaN one: given back
        assert (await ledger.user_status(world.guild.id, world.alice.id)).used == used + 1

    bad_id, bad = await world.imagine(world.alice, "a blank picture", seed=NAN_SEED)
    told = await interaction_of(bad).wait_for_original(lambda m: "failed" in m.content)
    assert "overflowed" in told.content and "given back" in told.content
    assert "Traceback" not in told.content and "NotFinite" not in told.content
    assert world.results_for(bad_id) == []
    async with read_ledger(world.tmp) as ledger:
        assert (await job_of(ledger, bad_id)).status is JobStatus.FAILED
        alice = await ledger.user_status(world.guild.id, world.alice.id)
        assert (alice.used, alice.queued, alice.running) == (used + 1, 0, 0)


async def test_a_job_failing_after_its_progress_message_was_deleted_is_still_reported(
    world: World,
) -> None:
    """With the progress message gone, the failure note goes to the channel instead."""
    with parked(world):
        _, blocker = await world.imagine(world.dave, "parked again", steps=3)
        await running(blocker)
        bad_id, bad = await world.imagine(world.gwen, POISON)
        await world.server.delete_message(world.art, bad)
    note = await world.server.wait_for_message(
        world.art, lambda m: f"Job #{bad_id} failed" in m.content, timeout=JOB_TIMEOUT
    )
    assert "ran out of memory" in note.content and "given back" in note.content
    assert note.pinged_user_ids == {world.gwen.id}
    async with read_ledger(world.tmp) as ledger:
        assert (await job_of(ledger, bad_id)).status is JobStatus.FAILED
        gwen = await ledger.user_status(note.guild_id or 0, world.gwen.id)
        assert (gwen.used, gwen.queued, gwen.running) == (1, 0, 0)  # her owl only


async def test_a_locked_database_makes_writes_wait_not_fail(world: World) -> None:
    locker = sqlite3.connect(world.tmp / "imagine.db", isolation_level=None)
    try:
        # 1. Locked while the job is submitted: the reservation waits for the lock.
        locker.execute("BEGIN EXCLUSIVE")
        interaction = await world.server.invoke(
            "imagine", user=world.erin, channel=world.art, options={"prompt": "a lock", "steps": 2}
        )
        await asyncio.sleep(LOCK_SECONDS)  # the fault itself: another writer holds the lock
        assert not (interaction.original and interaction.original.custom_ids)  # not queued yet
        locker.execute("ROLLBACK")
        progress = await interaction.wait_for_original(lambda m: bool(m.custom_ids))
        job_id = job_id_of(progress)

        # 2. Locked while the job completes: recording that its delivery starts waits for the
        # lock (a post must never happen unrecorded), then the result is posted once.
        with parked(world):
            await running(progress)
            locker.execute("BEGIN EXCLUSIVE")
        await asyncio.sleep(LOCK_SECONDS)  # the fault itself: another writer holds the lock
        assert result_of(interaction) is None  # not posted while its start can't be recorded
        locker.execute("ROLLBACK")
        result = await wait_result(interaction)
    finally:
        if locker.in_transaction:
            locker.execute("ROLLBACK")
        locker.close()
    await assert_delivered_once(world, job_id, result)
    async with read_ledger(world.tmp) as ledger:
        erin = await ledger.user_status(progress.guild_id or 0, world.erin.id)
        # One reservation, counted once; nothing left half-written.
        assert (erin.used, erin.queued, erin.running) == (1, 0, 0)
    check = sqlite3.connect(world.tmp / "imagine.db")
    try:
        assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        check.close()


async def test_sigterm_while_a_result_is_posted_lets_it_finish(world: World) -> None:
    """A stop waits (boundedly) for a result already on its way, then marks it done, so the
    next start does not post it again."""
    loop = asyncio.get_running_loop()
    bot = world.bot
    with parked(world):
        job_id, progress = await world.imagine(world.dave, "a last delivery")
        await running(progress)
        followups = rf"^/webhooks/\d+/{re.escape(interaction_of(progress).token)}$"
        # Discord holds the result back for 3 s: the stop comes while it is being posted.
        world.server.inject_failures("POST", followups, [Failure(429, retry_after=3)])
    await world.server.wait_for_request("POST", followups, status=429, timeout=JOB_TIMEOUT)
    bot.unwatch()
    assert bot.process is not None
    bot.process.send_signal(signal.SIGTERM)
    signalled = loop.time()
    assert await bot.exited(STOP_WITHIN) == 0, bot.output[-3000:]
    assert loop.time() - signalled < STOP_WITHIN
    result = result_of(interaction_of(progress))
    assert result is not None, bot.output[-3000:]
    await assert_delivered_once(world, job_id, result)  # done: no restart will repeat it
    await start_bot(world)


async def test_sigterm_mid_job_exits_promptly_and_the_next_start_delivers_it_once(
    world: World,
) -> None:
    """Extends `tests/bot/test_restart.py` (SIGTERM keeps the job): within a bound, and the
    next start delivers it exactly once."""
    loop = asyncio.get_running_loop()
    bot = world.bot
    with parked(world):
        job_id, progress = await world.imagine(world.frank, "a graceful stop", steps=10)
        await running(progress)
        bot.unwatch()
        assert bot.process is not None
        bot.process.send_signal(signal.SIGTERM)
        signalled = loop.time()
        # The user is told before the parked job is let go (then interrupted at its step end).
        await interaction_of(progress).wait_for_original(lambda m: "restarting" in m.content)
    assert await bot.exited(STOP_WITHIN) == 0, bot.output[-3000:]
    assert loop.time() - signalled < STOP_WITHIN
    assert not (world.tmp / "imagine.db-journal").exists()  # no write was cut off
    assert world.results_for(job_id) == []
    async with read_ledger(world.tmp) as ledger:
        job = await job_of(ledger, job_id)
        assert job.status in ACTIVE_STATUSES and job.request.interaction_token is not None

    await start_bot(world)
    result = await wait_result(interaction_of(progress), within=JOB_TIMEOUT)
    await assert_delivered_once(world, job_id, result)
    assert result_of(interaction_of(progress)) is result
    async with read_ledger(world.tmp) as ledger:
        frank = await ledger.user_status(result.guild_id or 0, world.frank.id)
        assert frank.used == 1  # counted once across the restart


#: Messages members post between a delivery's start and its post in a busy channel.
BUSY_CHANNEL = 1000


async def test_a_kill_right_after_posting_never_posts_twice(world: World) -> None:
    """SIGKILL in the narrowest window, after the post and before it is recorded, several
    times, once in a busy channel (1,000 messages between the delivery's start and its post):
    each restart finds the post in the channel and records it; nothing is posted twice,
    lost, or counted twice."""
    gate = world.tmp / KILL_BEFORE_DONE
    async with read_ledger(world.tmp) as ledger:
        used_before = (await ledger.user_status(world.guild.id, world.gwen.id)).used
    for attempt in range(3):
        bot = world.bot
        bot.unwatch()
        gate.touch()
        busy = attempt == 1
        hold = world.tmp / HOLD_POST
        if busy:
            hold.touch()
        try:
            job_id, _progress = await world.imagine(world.gwen, f"a narrow window {attempt}")
            if busy:
                await bot.wait_for_line(rf"holding the post of job {job_id}", within=JOB_TIMEOUT)
                for n in range(BUSY_CHANNEL):
                    await world.server.post_message(world.art, world.dave, f"chat {n}")
                hold.unlink()
            assert await bot.exited(JOB_TIMEOUT) == -signal.SIGKILL, bot.output[-3000:]
        finally:
            gate.unlink(missing_ok=True)
            hold.unlink(missing_ok=True)
        posted = world.results_for(job_id)
        assert len(posted) == 1  # it was posted just before the kill
        async with read_ledger(world.tmp) as ledger:
            job = await job_of(ledger, job_id)
            assert job.status in ACTIVE_STATUSES and job.delivery_started_at is not None
        await start_bot(world)
        await world.bot.wait_for_line(
            rf"job {job_id}: its result was already posted \(message {posted[0].id}\)",
            within=JOB_TIMEOUT,
        )
        assert world.results_for(job_id) == posted  # not posted again
        async with read_ledger(world.tmp) as ledger:
            job = await job_of(ledger, job_id)
            assert (job.status, job.message_id) == (JobStatus.DONE, posted[0].id)
            gwen = await ledger.user_status(world.guild.id, world.gwen.id)
            assert (gwen.used, gwen.queued, gwen.running) == (used_before + attempt + 1, 0, 0)


async def test_a_kill_right_after_posting_an_upscale_keeps_its_whole_price(
    world: World,
) -> None:
    """The restart that finds a posted upscale refunds what it did not post by the upscale's
    price, not by its image count: one image posted, nothing given back."""
    job_id, progress = await world.imagine(world.erin, "a window to upscale")
    result = await wait_result(interaction_of(progress))
    await world.bot.wait_for_line(rf"job {job_id}: delivered", within=JOB_TIMEOUT)
    async with read_ledger(world.tmp) as ledger:
        before = (await ledger.user_status(world.guild.id, world.erin.id)).used
    gate = world.tmp / KILL_BEFORE_DONE
    bot = world.bot
    bot.unwatch()
    gate.touch()
    try:
        pressed = await world.server.click(result, button_id(result, "u0"), user=world.erin)
        upscale_id = job_id_of(await pressed.wait_for_message(lambda m: bool(m.custom_ids)))
        assert await bot.exited(JOB_TIMEOUT) == -signal.SIGKILL, bot.output[-3000:]
    finally:
        gate.unlink(missing_ok=True)
    posted = world.results_for(upscale_id)
    assert len(posted) == 1
    await start_bot(world)
    await world.bot.wait_for_line(
        rf"job {upscale_id}: its result was already posted", within=JOB_TIMEOUT
    )
    async with read_ledger(world.tmp) as ledger:
        upscale = await job_of(ledger, upscale_id)
        assert (upscale.request.kind, upscale.status) == (JobKind.UPSCALE, JobStatus.DONE)
        assert upscale.request.image_count == 2  # [images] upscale_cost, kept whole
        assert (await ledger.user_status(world.guild.id, world.erin.id)).used == before + 2


async def test_a_reroll_after_withheld_images_asks_for_the_images_asked(world: World) -> None:
    """Two images asked, one withheld and given back: the job is charged one, and its reroll
    asks for two again, not for the one that was posted. (Guidance 0: two images fit the
    simulated GPU's two samples.)"""
    job_id, progress = await world.imagine(
        world.alice, "two statues", count=2, seed=FLAGGED_SEED - 1, guidance=0
    )
    result = await wait_result(interaction_of(progress))
    assert len(result.attachments) == 1  # FLAGGED_SEED's image was withheld
    await world.bot.wait_for_line(rf"job {job_id}: delivered", within=JOB_TIMEOUT)
    pressed = await world.server.click(result, button_id(result, "reroll"), user=world.alice)
    again = await wait_result(pressed)
    assert len(again.attachments) == 2  # new seeds: none flagged
    await world.bot.wait_for_line(rf"job {job_id_of(again)}: delivered", within=JOB_TIMEOUT)
    async with read_ledger(world.tmp) as ledger:
        first = (await job_of(ledger, job_id)).request
        assert (first.image_count, first.images_asked) == (1, 2)
        reroll = (await job_of(ledger, job_id_of(again))).request
        assert (reroll.reroll_of, reroll.image_count, reroll.images_asked) == (job_id, 2, 2)


async def test_a_ledger_write_failing_after_posting_is_retried_not_reposted(
    world: World,
) -> None:
    """The disk is full when the posted result is to be recorded: the bot keeps trying (the
    result is out, so it must not be refunded or posted again) and records it once it can."""
    gate = world.tmp / FAIL_DONE
    gate.touch()
    try:
        job_id, _progress = await world.imagine(world.erin, "a full disk")
        await world.bot.wait_for_line(
            rf"job {job_id}: could not record its delivery .*disk is full", within=JOB_TIMEOUT
        )
        assert len(world.results_for(job_id)) == 1
    finally:
        gate.unlink(missing_ok=True)
    await assert_delivered_once(world, job_id, world.results_for(job_id)[0])


def chattr(path: Path, flag: str) -> bool:
    """`chattr +i/-i` (root, on a filesystem with attributes); False where it cannot run."""
    try:
        done = subprocess.run(["chattr", flag, str(path)], capture_output=True, check=False)
    except FileNotFoundError:
        return False
    return done.returncode == 0


async def test_a_database_made_immutable_right_after_posting_is_survived_and_recorded_once(
    world: World,
) -> None:
    """The SQLite file turns immutable between posting a result and recording it. With WAL
    the bot died of SIGBUS (its shared-memory map) and posted again after the restart; with
    the rollback journal every write fails plainly: the bot lives, refuses new jobs without
    charging, keeps trying, and records the result once the file is writable again."""
    probe = world.tmp / "chattr-probe"
    probe.touch()
    if not chattr(probe, "+i"):
        pytest.skip("chattr +i needs root on a filesystem with file attributes")
    chattr(probe, "-i")
    database = world.tmp / "imagine.db"
    gate = world.tmp / IMMUTABLE_BEFORE_DONE
    gate.touch()
    try:
        job_id, _progress = await world.imagine(world.bob, "an immutable file")
        await world.bot.wait_for_line(
            rf"job {job_id}: could not record its delivery", within=JOB_TIMEOUT
        )
        assert not gate.exists() and len(world.results_for(job_id)) == 1
        refused = await world.server.invoke(
            "imagine", user=world.carol, channel=world.art, options={"prompt": "read-only"}
        )
        message = await refused.wait_for_original()
        assert refused.ephemeral and "nothing was charged" in message.content
        assert not message.custom_ids and world.bot.running
    finally:
        gate.unlink(missing_ok=True)
        chattr(database, "-i")
    await assert_delivered_once(world, job_id, world.results_for(job_id)[0])
    async with read_ledger(world.tmp) as ledger:
        carol = await ledger.user_status(world.guild.id, world.carol.id)
        assert carol.queued == 0 and carol.running == 0


@contextlib.contextmanager
def full_disk(folder: Path) -> Iterator[Path]:
    """A real full disk at `folder`: a 64 KiB tmpfs mounted there and filled to the last byte
    (needs root and `mount`; skips elsewhere). Yields the filler file."""
    folder.mkdir(parents=True, exist_ok=True)
    mount = ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)]
    try:
        mounted = subprocess.run(mount, capture_output=True, check=False).returncode == 0
    except FileNotFoundError:
        mounted = False
    if not mounted:
        pytest.skip("a small full filesystem needs root to mount a tmpfs")
    try:
        filler = folder / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        finally:
            os.close(fd)
        yield filler
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=True)


async def test_a_full_disk_when_keeping_a_result_still_delivers_it_and_says_so(
    world: World,
) -> None:
    """The image store's disk is full (a real one) when a result is to be kept at full size
    for Upscale and Vary: the result is still delivered once and charged, its message says
    its image could not be kept and why, no temporary file is left behind, and a press on
    its Upscale says so too, not that the image expired."""
    outputs = world.tmp / "imagine-bot-images" / "outputs"
    async with read_ledger(world.tmp) as ledger:
        used_before = (await ledger.user_status(world.guild.id, world.frank.id)).used
    with full_disk(outputs) as filler:
        job_id, progress = await world.imagine(world.frank, "a full image store")
        result = await wait_result(interaction_of(progress), within=JOB_TIMEOUT)
        await assert_delivered_once(world, job_id, result)
        assert "could not keep this image at full size (the disk is full)" in result.content
        assert list(outputs.iterdir()) == [filler]  # no temporary file left behind
        press = await world.server.click(result, button_id(result, "u0"), user=world.frank)
        note = await press.wait_for_original(lambda m: m is not result)
        assert press.ephemeral and not note.custom_ids
        assert f"could not keep image 1 of job #{job_id} when it was made (the disk is full)" in (
            note.content
        )
    async with read_ledger(world.tmp) as ledger:
        assert (await job_of(ledger, job_id)).unkept == "the disk is full"
        frank = await ledger.user_status(world.guild.id, world.frank.id)
        assert frank.used == used_before + 1  # the delivered image; the refused press is free


async def test_a_discord_outage_while_posting_is_waited_out_and_delivered_once(
    world: World,
) -> None:
    """Every attempt of discord.py (5 tries) gets a 500, and the next one too: the finished
    job keeps its images, looks for a post before posting again, and is delivered once."""
    with parked(world):
        job_id, progress = await world.imagine(world.carol, "an outage")
        await running(progress)
        interaction = interaction_of(progress)
        followups = rf"^/webhooks/\d+/{re.escape(interaction.token)}$"
        injection = world.server.inject_failures("POST", followups, [500] * 6)
    result = await wait_result(interaction, within=JOB_TIMEOUT)
    assert [r.status for r in injection.hits] == [500] * 6
    assert any(f"job {job_id}: Discord did not take the result" in line for line in world.bot.lines)
    await assert_delivered_once(world, job_id, result)


async def test_an_imagine_discord_does_not_let_the_bot_answer_is_cancelled_and_free(
    world: World,
) -> None:
    """The request is admitted while the bot answers "thinking…": when Discord refuses that
    answer (404 Unknown interaction), the job admitted beside it is cancelled with its images
    given back; nothing is made or posted, and the member is told something went wrong."""
    async with read_ledger(world.tmp) as ledger:
        before = await ledger.user_status(world.guild.id, world.gwen.id)
    callbacks = r"^/interactions/\d+/[^/]+/callback$"
    unknown = Failure(404, code=10062, message="Unknown interaction")
    injection = world.server.inject_failures("POST", callbacks, [unknown])
    interaction = await world.server.invoke(
        "imagine", user=world.gwen, options={"prompt": "an unanswered robot", "steps": 2}
    )
    line = await world.bot.wait_for_line(r"job (\d+): cancelled, the command could not be")
    job_id = int(re.search(r"job (\d+)", line).group(1))  # type: ignore[union-attr]
    told = await interaction.wait_for_original(lambda m: "went wrong" in m.content)
    assert [r.status for r in injection.hits] == [404] and told.ephemeral
    async with read_ledger(world.tmp) as ledger:
        job = await job_of(ledger, job_id)
        after = await ledger.user_status(world.guild.id, world.gwen.id)
    assert (job.status, job.request.prompt) == (JobStatus.CANCELLED, "an unanswered robot")
    assert (after.used, after.queued, after.running) == (before.used, 0, 0)
    assert interaction.messages == [told] and world.results_for(job_id) == []


async def test_a_second_bot_on_the_same_database_refuses_to_start(world: World) -> None:
    """A second `imagine-bot run` on the running bot's database (started by mistake) stops
    before it touches a job or Discord; the running bot goes on and delivers once."""
    assert world.config is not None
    logins = len(world.server.requests_to("GET", r"^/users/@me$"))
    identified = world.server.gateway.identify_count
    code, output = await run_once(world.config, token=world.token)
    assert code == 2, output[-3000:]
    lines = [line for line in output.splitlines() if "another imagine-bot" in line]
    assert len(lines) == 1 and f"pid {world.bot.pid}" in lines[0], output[-3000:]
    # Its token was checked (one REST call, before its database); it never went online.
    assert len(world.server.requests_to("GET", r"^/users/@me$")) == logins + 1
    assert world.server.gateway.identify_count == identified
    job_id, progress = await world.imagine(world.dave, "still the only one")
    await assert_delivered_once(world, job_id, await wait_result(interaction_of(progress)))
