"""End to end: every rule a command declares to Discord is checked by the bot too.

Discord would never send these payloads (it enforces servers-only commands and declared
option ranges), so each is forged (`validate=False`) against the real `imagine-bot run`:
the answer is one clear private message, nothing is queued or changed, and nothing large is
stored.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from testkit.discord_server import MANAGE_GUILD, Message, User
from testkit.jobs import button_id, read_ledger, wait_result
from testkit.world import NewWorld, World

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.usefixtures("clean_world")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(new_world: NewWorld) -> AsyncIterator[World]:
    """`admin` has Manage Server; `alice` and `bob` are members. Commands are global, as most bots
    sync them, so a DM can name `/imagine` at all."""
    async with new_world(guild="Rules Club", users=("alice", "bob")) as world:
        admins = world.guild.create_role("Admins", permissions=MANAGE_GUILD)
        world.add_user("admin", roles=[admins])
        world.configure(guild_ids=[])
        async with world.running_bot():
            yield world


async def forged(world: World, who: User, command: str, **how: object) -> str:
    """Send a payload Discord would not; the private answer's text."""
    interaction = await world.server.invoke(command, user=who, validate=False, **how)  # type: ignore[arg-type]
    message = await interaction.wait_for_original()
    assert interaction.ephemeral and message.pinged_user_ids == set()
    assert "error `" not in message.content, message.content  # a refusal, not a crash
    assert not message.custom_ids  # no job was queued
    return message.content


async def test_imagine_from_a_direct_message_is_refused(world: World) -> None:
    dm = world.server.create_dm_channel(world.alice)
    text = await forged(world, world.alice, "imagine", channel=dm, options={"prompt": "a cat"})
    assert "servers only" in text
    async with read_ledger(world.tmp) as ledger:  # no separate quota pool for DMs
        assert await ledger.jobs_for_user(0, world.alice.id) == ()


@pytest.mark.parametrize(
    ("command", "options", "expected"),
    [
        ("quota set", {"daily": -5}, "`daily` must be between 0 and 100000, not -5."),
        ("quota set", {"daily": 2**70}, f"`daily` must be between 0 and 100000, not {2**70}."),
        ("usage", {"days": 0}, "`days` must be between 1 and 90, not 0."),
        ("usage", {"days": 91}, "`days` must be between 1 and 90, not 91."),
    ],
)
async def test_numbers_outside_the_declared_ranges_are_refused(
    world: World, command: str, options: dict[str, object], expected: str
) -> None:
    if command == "quota set":
        options = {"user": world.alice, **options}
    text = await forged(world, world.admin, command, channel=world.art, options=options)
    assert text == expected
    async with read_ledger(world.tmp) as ledger:  # nothing was changed
        assert await ledger.quota_history(world.guild.id, world.alice.id) == ()


async def test_a_huge_forged_prompt_is_refused_and_not_stored(world: World) -> None:
    huge = "a robot " * 375_000  # 3,000,000 characters; Discord allows 1000
    text = await forged(world, world.alice, "imagine", channel=world.art, options={"prompt": huge})
    assert text == "`prompt` must be between 1 and 1000 characters long."
    async with read_ledger(world.tmp) as ledger:
        jobs = await ledger.jobs_for_user(world.guild.id, world.alice.id)
        assert all(len(job.request.prompt) <= 2000 for job in jobs)


async def test_a_button_acts_only_on_its_own_jobs_message(world: World) -> None:
    """Bob forges his own job's Delete onto Alice's result: the id passes the owner check,
    but the message is not that job's, so nothing is deleted."""
    server = world.server

    async def result_of(who: User, prompt: str) -> Message:
        options = {"prompt": prompt, "steps": 2}
        return await wait_result(await server.invoke("imagine", user=who, options=options))

    alices = await result_of(world.alice, "a lighthouse")
    bobs = await result_of(world.bob, "a harbour")
    forged_id = button_id(bobs, "delete")  # Bob's own job, on Alice's message
    click = await server.click(alices, forged_id, user=world.bob, validate=False)
    note = await click.wait_for_message(lambda m: m is not alices)
    assert note.ephemeral and "Only the person who asked" in note.content
    assert not alices.deleted
    own = await server.click(bobs, forged_id, user=world.bob)
    await own.wait_for(lambda _: bobs.deleted, what="Bob's own result to be deleted")
    assert not alices.deleted
