"""Several bot processes on one PostgreSQL ledger, each running its share of Discord's shards
(`[discord] shard_count/shard_ids`): each answers its own guilds, a second process for a
running shard (or with another shard layout) refuses to start, and a restarted process
recovers only its own shards' jobs. Needs $IMAGINE_BOT_TEST_PG_URL (CI starts PostgreSQL).
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from bot.ledger import ACTIVE_STATUSES, JobStatus, QuotaPolicy, open_ledger
from testkit.config import bot_config
from testkit.discord_server import Guild
from testkit.jobs import JOB_TIMEOUT, job_of, wait_result
from testkit.pg import PgServer
from testkit.process import BotProcess, run_once
from testkit.world import World, open_world

pytestmark = pytest.mark.asyncio(loop_scope="module")


def config_for(
    world: World, folder: Path, url: str, guilds: list[Guild], **discord: object
) -> Path:
    folder.mkdir(exist_ok=True)
    return bot_config(
        folder,
        world.server,
        world.model_cache,
        guild_ids=[g.id for g in guilds],
        discord=discord,
        database={"url": url},
    )


@asynccontextmanager
async def bots(world: World) -> AsyncIterator[list[BotProcess]]:
    """The bot processes a test starts; any still running at the end (a failed check) are
    killed, so none outlives the test."""
    started: list[BotProcess] = []
    try:
        yield started
    finally:
        for bot in started:
            if bot.running:
                await bot.stop(signal.SIGKILL)


async def test_two_processes_split_the_guilds_of_one_database(
    pg_server: PgServer, model_cache: Path, tmp_path: Path
) -> None:
    url = await pg_server.create_database()
    policy = QuotaPolicy()
    async with (
        open_world(tmp_path, model_cache, users=("alice",), shard_count=2) as world,
        bots(world) as started,
    ):
        server = world.server
        # A guild on each shard (a guild's shard is its id's timestamp bits, modulo 2).
        by_shard: dict[int, Guild] = {server.gateway.shard_for(world.guild.id): world.guild}
        while len(by_shard) < 2:
            guild = world.add_guild(f"g{len(world.guilds)}", "Another Club")
            by_shard.setdefault(server.gateway.shard_for(guild.id), guild)
        guilds = [by_shard[0], by_shard[1]]
        channels = [world.add_channel(f"art{i}", guild=g) for i, g in enumerate(guilds)]
        first = config_for(world, tmp_path / "a", url, guilds, shard_count=2, shard_ids=[0])
        second = config_for(world, tmp_path / "b", url, guilds, shard_count=2, shard_ids=[1])

        async def start(config: Path) -> BotProcess:
            bot = await BotProcess(server, config, token=world.token).start()
            started.append(bot)
            return bot

        a = await start(first)
        await a.wait_ready(1)
        b = await start(second)
        await b.wait_ready(2)
        await a.wait_for_line("this process runs shard\\(s\\) 0 of 2")

        # A third process for shard 1, and one without sharding, refuse with one line each.
        third = config_for(world, tmp_path / "c", url, guilds, shard_count=2, shard_ids=[1])
        code, out = await run_once(third, token=world.token)
        assert code != 0 and "another imagine-bot runs shard 1/2 on this database" in out
        whole = config_for(world, tmp_path / "d", url, guilds)
        code, out = await run_once(whole, token=world.token)
        assert code != 0 and "with shard_count = 2" in out and "this one with 1" in out

        # Each guild is answered by the process of its shard.
        done = []
        for channel, bot, other in ((channels[0], a, b), (channels[1], b, a)):
            job_id, progress = await world.imagine(world.alice, "a cat", channel=channel)
            assert progress.interaction is not None
            await wait_result(progress.interaction)
            await bot.wait_for_line(rf"job {job_id}: delivered")
            assert f"job {job_id}: " not in other.output
            done.append(job_id)

        # B dies with a job of its shard running; A never touches it; B's restart delivers it.
        job_id, progress = await world.imagine(
            world.alice, "a slow one", channel=channels[1], steps=40
        )
        await b.wait_for_line(rf"job {job_id}: running")
        b.unwatch()
        b.process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        assert await b.exited() == -signal.SIGKILL
        async with open_ledger(url, policy, migrate=False) as ledger:
            assert (await job_of(ledger, job_id)).status in ACTIVE_STATUSES  # A left it alone
        b = await start(second)
        await b.wait_for_line(r"recovered 1 job\(s\)", within=JOB_TIMEOUT)
        assert progress.interaction is not None
        await wait_result(progress.interaction)
        await b.wait_for_line(rf"job {job_id}: delivered")  # recorded after the post
        assert len(world.results_for(job_id)) == 1
        assert f"job {job_id}" not in a.output
        async with open_ledger(url, policy, migrate=False) as ledger:
            for done_id in (*done, job_id):
                assert (await job_of(ledger, done_id)).status is JobStatus.DONE
        for bot in (a, b):
            assert await bot.stop() == 0
