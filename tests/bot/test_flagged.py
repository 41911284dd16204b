"""Images the safety checker flags, under `flagged_images = "refuse_outside_nsfw"`.

`builtin:tiny-flagging` ships a real (tiny) safety checker that flags every image. Outside
NSFW channels the images are never uploaded and the job gives its images back; in an NSFW
channel they are posted as usual. (Spoiler mode is covered by `test_restart.py`.) This bot
has no tagger: `/describe style:tags` is refused.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from PIL import Image

from bot.ledger import JobStatus
from testkit.discord_server import AttachmentOption
from testkit.jobs import JOB_TIMEOUT, job_id_of, job_of, read_ledger, wait_result
from testkit.world import NewWorld, World

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(new_world: NewWorld) -> AsyncIterator[World]:
    """#art, and #after-dark (NSFW); commands synced globally, this time."""
    async with new_world(users=("alice",)) as world:
        world.add_channel("after-dark", nsfw=True)
        world.configure(
            guild_ids=[],
            engine={"model": "builtin:tiny-flagging"},
            moderation={"flagged_images": "refuse_outside_nsfw"},
        )
        async with world.running_bot():
            yield world


async def test_without_guild_ids_commands_are_synced_globally(world: World) -> None:
    assert {c["name"] for c in world.server.synced_commands()} == {
        "describe",
        "edit",
        "imagine",
        "info",
        "inpaint",
        "models",
        "quota",
        "settings",
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
    # The job is marked done just after its result is posted: wait for the bot to say so.
    await world.bot.wait_for_line(rf"job {job_id_of(result)}: delivered", within=JOB_TIMEOUT)
    async with read_ledger(world.tmp) as ledger:
        job = await job_of(ledger, job_id_of(result))
        assert job.status is JobStatus.DONE and job.request.image_count == 1


async def test_describe_as_tags_is_refused_privately_without_a_tagger(world: World) -> None:
    """This bot describes in sentences only (`[describe] model` as shipped, no tagger):
    `style:tags` is one private line naming the fix, before the picture is fetched or any
    model loads, at no cost."""
    picture = io.BytesIO()
    Image.new("RGB", (16, 16), "orange").save(picture, format="PNG")
    async with read_ledger(world.tmp) as ledger:
        before = await ledger.user_status(world.guild.id, world.alice.id)
    asked = await world.server.invoke(
        "describe",
        user=world.alice,
        channel=world.art,
        options={
            "image": AttachmentOption("fox.png", picture.getvalue(), "image/png"),
            "style": "tags",
        },
    )
    message = await asked.wait_for_original()
    assert asked.ephemeral and message.content == (
        "Tag-style prompts are off on this bot (its operator set no tagger): leave style "
        "empty or pick prose."
    )
    assert not world.server.requests_to("GET", r"^/attachments/.*fox\.png")  # never fetched
    assert not [line for line in world.bot.lines if "loading describe model" in line]
    async with read_ledger(world.tmp) as ledger:
        assert await ledger.user_status(world.guild.id, world.alice.id) == before
