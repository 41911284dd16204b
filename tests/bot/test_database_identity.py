"""A lost, replaced or restored database, end to end with the real `imagine-bot run`.

A deleted SQLite file must not come back empty at the next start (quotas, blocks and history
gone, ids starting again), another database must not be taken for this one, and after a
restore from an older backup, when job ids are handed out again, an old message's buttons
must never act for the new job that now has their id.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from bot.ledger import DatabaseMarker, inspect_database, upgrade_to_head
from testkit.config import database_url
from testkit.jobs import button_id, wait_result
from testkit.process import run_once
from testkit.world import NewWorld, World

from .test_startup import assert_one_clear_line

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(new_world: NewWorld) -> AsyncIterator[World]:
    """Alice and Bob in #art; the test starts and stops the bot itself."""
    async with new_world(users=("alice", "bob")) as world:
        world.configure()
        yield world


async def test_a_lost_or_other_database_stops_start_up_and_a_restore_keeps_buttons_safe(
    world: World,
) -> None:
    assert world.config is not None
    url = database_url(world.tmp)
    db = world.tmp / "imagine.db"
    marker = DatabaseMarker.beside(world.config).path
    server = world.server

    backup = world.tmp / "backup.db"
    async with world.running_bot():
        _job, progress = await world.imagine(world.alice, "a first picture")
        assert progress.interaction is not None
        await wait_result(progress.interaction)
        with sqlite3.connect(db) as live, sqlite3.connect(backup) as copy:
            live.backup(copy)  # SQLite's online backup: consistent while the bot runs
        alices_id, progress = await world.imagine(world.alice, "a second picture")
        assert progress.interaction is not None
        alices = await wait_result(progress.interaction)
    identity = (await inspect_database(url)).identity
    assert identity is not None and f'database_id = "{identity}"' in marker.read_text()

    # The file is deleted: the next start refuses to make an empty one in its place.
    db.unlink()
    code, output = await run_once(world.config, token=world.token)
    assert code == 2
    assert_one_clear_line(
        output, "is empty, but this configuration used database " + identity, str(marker)
    )
    assert not db.exists()

    # Another database at the configured URL is not taken for this one.
    await upgrade_to_head(url)
    other = (await inspect_database(url)).identity
    assert other is not None and other != identity
    code, output = await run_once(world.config, token=world.token)
    assert code == 2
    assert_one_clear_line(
        output, f"is database {other}, but this configuration used database {identity}"
    )

    # The older backup is restored: it does not know Alice's second job, and ids repeat.
    shutil.copy(backup, db)
    async with world.running_bot():
        bobs_id, progress = await world.imagine(world.bob, "bob's new picture")
        assert bobs_id == alices_id  # the id of Alice's posted job is Bob's now
        assert progress.interaction is not None
        bobs = await wait_result(progress.interaction)
        # Bob presses the buttons of Alice's message, which name "his" id: refused.
        delete = await server.click(alices, button_id(alices, "delete"), user=world.bob)
        note = await delete.wait_for_message(lambda m: m is not alices)
        assert note.ephemeral and "Only the person who asked" in note.content
        assert not alices.deleted
        reroll = await server.click(alices, button_id(alices, "reroll"), user=world.bob)
        note = await reroll.wait_for_original(lambda m: m is not alices)
        assert reroll.ephemeral and "no longer exists" in note.content
        # His own buttons still work.
        own = await server.click(bobs, button_id(bobs, "delete"), user=world.bob)
        await own.wait_for(lambda _: bobs.deleted, what="Bob's own result to be deleted")
        assert not alices.deleted
        server.assert_clean()
