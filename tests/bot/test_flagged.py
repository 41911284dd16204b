"""Images the safety checker flags, under `flagged_images = "refuse_outside_nsfw"`.

`builtin:tiny-flagging` ships a real (tiny) safety checker that flags every image. Outside
NSFW channels the images are never uploaded and the job gives its images back; in an NSFW
channel they are posted as usual. (Spoiler mode is covered by `test_restart.py`.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from bot.ledger import JobStatus
from tests.discord_server import Channel, DiscordTestServer, Guild, User

from .conftest import (
    JOB_TIMEOUT,
    BotProcess,
    bot_config,
    job_id_of,
    job_of,
    read_ledger,
    wait_result,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")


@dataclass
class World:
    server: DiscordTestServer
    guild: Guild
    art: Channel
    after_dark: Channel  # NSFW
    alice: User
    tmp: Path


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(
    model_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[World]:
    tmp = tmp_path_factory.mktemp("flagged")
    async with DiscordTestServer(default_timeout=15) as server:
        server.create_application("imagine-bot")
        guild = server.create_guild("Art Club")
        art = guild.create_text_channel("art")
        after_dark = guild.create_text_channel("after-dark", nsfw=True)
        alice = server.create_user("alice")
        guild.add_member(alice)
        config = bot_config(
            tmp,
            server,
            model_cache,
            guild_ids=[],  # global commands, this time
            engine={"model": "builtin:tiny-flagging"},
            moderation={"flagged_images": "refuse_outside_nsfw"},
        )
        bot = await BotProcess(server, config, token=server.application.token).start()
        try:
            await bot.wait_ready()
            yield World(server, guild, art, after_dark, alice, tmp)
        finally:
            assert await bot.stop() == 0, bot.output[-3000:]
        server.assert_clean()


async def test_without_guild_ids_commands_are_synced_globally(world: World) -> None:
    assert {c["name"] for c in world.server.synced_commands()} == {
        "imagine",
        "info",
        "quota",
        "usage",
    }
    assert world.server.synced_commands(world.guild) == []


async def test_flagged_images_are_withheld_outside_nsfw_and_given_back(world: World) -> None:
    interaction = await world.server.invoke(
        "imagine",
        user=world.alice,
        channel=world.art,
        options={"prompt": "a statue", "steps": 2, "count": 2},
    )
    progress = await interaction.wait_for_original(lambda m: bool(m.custom_ids))
    job_id = job_id_of(progress)
    told = await interaction.wait_for_original(
        lambda m: "safety checker flagged" in m.content, timeout=JOB_TIMEOUT
    )
    assert told.ephemeral and "given back" in told.content and not told.custom_ids
    assert not [m for m in world.server.messages_in(world.art) if m.attachments]
    async with read_ledger(world.tmp) as ledger:
        assert (await job_of(ledger, job_id)).status is JobStatus.FAILED
        assert (await ledger.user_status(world.guild.id, world.alice.id)).used == 0


async def test_flagged_images_are_posted_in_nsfw_channels(world: World) -> None:
    interaction = await world.server.invoke(
        "imagine",
        user=world.alice,
        channel=world.after_dark,
        options={"prompt": "a statue", "steps": 2},
    )
    result = await wait_result(interaction)
    (image,) = result.attachments
    assert not image.spoiler and image.filename.startswith("imagine-")
    async with read_ledger(world.tmp) as ledger:
        job = await job_of(ledger, job_id_of(result))
        assert job.status is JobStatus.DONE and job.image_count == 1
