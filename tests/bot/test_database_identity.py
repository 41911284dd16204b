"""Where the bot keeps its state, and a lost, replaced or restored database, end to end with
the real `imagine-bot run`.

A deleted SQLite file must not come back empty at the next start (quotas, blocks and history
gone, ids starting again), another database must not be taken for this one, and after a
restore from an older backup, when job ids are handed out again, an old message's buttons
must never act for the new job that now has their id. The bot never writes beside its config
file (a read-only bind mount in Compose, `ProtectSystem=strict` under systemd): its state
goes in the state folder, and an install whose state is beside its config keeps it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from bot.ledger import DatabaseMarker, QuotaPolicy, inspect_database, open_ledger, upgrade_to_head
from testkit.config import database_url, write_config
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
    marker = DatabaseMarker.of(world.config, world.tmp).path
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


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """`folder` made unwritable for this process's user: mode 0o555, and for root, whom modes
    do not stop, the immutable attribute (`chattr +i`, which stops root too). Skips where
    neither holds (root without `chattr` or on a filesystem without attributes)."""
    folder.chmod(0o555)
    immutable = False
    try:
        if os.geteuid() == 0:
            done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, check=False)
            immutable = done.returncode == 0
        with contextlib.suppress(OSError):
            (folder / ".probe").touch()
            (folder / ".probe").unlink()
            pytest.skip("cannot make a folder unwritable here (root without chattr +i)")
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


def operator_config(world: World, folder: Path) -> Path:
    """An operator's config in `folder`: no `[paths]`, the default relative SQLite file."""
    folder.mkdir()
    return write_config(
        folder / "config.toml",
        {
            "discord": {"api_base_url": world.server.api_base_url, "guild_ids": [world.guild.id]},
            "engine": {
                "model": "builtin:tiny",
                "cache_dir": str(world.model_cache),
                "max_batch_size": 4,
                "batch_wait_ms": 20,
            },
        },
    )


@contextlib.contextmanager
def configured(world: World, config: Path) -> Iterator[None]:
    """The world's bot runs with `config` for the block."""
    before, world.config = world.config, config
    try:
        yield
    finally:
        world.config = before


async def test_a_read_only_config_folder_keeps_all_state_in_the_state_folder(
    world: World,
) -> None:
    """As in Compose (`./config:/config:ro`, `IMAGINE_BOT_STATE_DIR=/data`): the bot starts,
    delivers, and keeps its database, its identity file and its images in the state folder.
    A state folder it cannot write stops start-up with one line naming that folder."""
    etc, data = world.tmp / "etc", world.tmp / "data"
    config = operator_config(world, etc)
    with read_only(etc), configured(world, config):
        async with world.running_bot(env={"IMAGINE_BOT_STATE_DIR": str(data)}) as bot:
            job_id, progress = await world.imagine(world.alice, "a read-only config")
            assert progress.interaction is not None
            await wait_result(progress.interaction)
            await bot.wait_for_line(rf"job {job_id}: delivered", within=30)
        assert f"state folder: {data} ($IMAGINE_BOT_STATE_DIR)" in bot.output
        identity = (
            await inspect_database(f"sqlite+aiosqlite:///{data / 'imagine-bot.db'}")
        ).identity
        assert identity is not None
        assert f'database_id = "{identity}"' in (data / "config.database-id").read_text()
        assert list((data / "imagine-bot-images" / "outputs").glob(f"{job_id}-*.png"))
        assert [p.name for p in etc.iterdir()] == ["config.toml"]  # nothing written beside it

        unwritable = etc / "state"
        code, output = await run_once(
            config, token=world.token, env={"IMAGINE_BOT_STATE_DIR": str(unwritable)}
        )
        assert code == 2
        line = assert_one_clear_line(
            output, f"cannot write in the state folder {unwritable}", "[paths] state_dir"
        )
        assert "[database] url" not in line


async def test_state_beside_the_config_from_an_earlier_version_is_kept(world: World) -> None:
    """Earlier versions kept the database and its identity file beside the config file.
    Without `[paths] state_dir` the bot keeps using them; with a new state folder it refuses
    to start on an empty database, naming the identity file, and never makes a fresh one."""
    old = world.tmp / "old"
    config = operator_config(world, old)
    url = f"sqlite+aiosqlite:///{old / 'imagine-bot.db'}"
    await upgrade_to_head(url)  # what an earlier version left beside its config
    identity = (await inspect_database(url)).identity
    assert identity is not None
    DatabaseMarker(old / "config.database-id").check(url, await inspect_database(url))
    with configured(world, config):
        async with world.running_bot() as bot:  # no [paths], no $IMAGINE_BOT_STATE_DIR
            job_id, progress = await world.imagine(world.bob, "kept beside the config")
            assert progress.interaction is not None
            await wait_result(progress.interaction)
        assert f"state folder: {old} (beside the config file, where an earlier version" in (
            bot.output
        )
        async with open_ledger(url, QuotaPolicy(), migrate=False) as ledger:
            assert await ledger.get_job(job_id) is not None  # in the earlier database
        assert (await inspect_database(url)).identity == identity
        assert not (old / "state-home").exists()  # the default folder was never made

        moved = world.tmp / "moved"
        code, output = await run_once(
            config, token=world.token, env={"IMAGINE_BOT_STATE_DIR": str(moved)}
        )
        assert code == 2
        assert_one_clear_line(
            output,
            f"used database {identity} (named in {old / 'config.database-id'}, where earlier "
            f"versions kept the bot's state). The state folder is now {moved}",
        )
        assert not (moved / "imagine-bot.db").exists()
