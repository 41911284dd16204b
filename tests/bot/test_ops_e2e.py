"""End to end: the ops endpoint and per-user rate limits of a real `imagine-bot run`.

One bot for the module, with `[ops] listen` on a free port (port 0; the bot logs the one it
got) and `[moderation] commands_per_minute = 3`, against the Discord test server. Every test
ends with `assert_clean()`: among Discord's rules, every interaction answered within 3 s.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio

from bot.ledger import JobStatus, RefusalReason
from testkit.jobs import job_id_of, read_ledger, wait_result
from testkit.ops import Samples, ops_address, read_metrics
from testkit.ops import get as ops_get
from testkit.world import NewWorld, World

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.usefixtures("clean_world")]

RELATIVE_TIME = re.compile(r"<t:\d+:R>")
LIMIT = 3  # commands per user per minute


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(new_world: NewWorld) -> AsyncIterator[World]:
    """`LIMIT` commands a minute per user; `world.ops` is the ops endpoint's address."""
    async with new_world(guild="Ops Club", users=("alice", "bob", "carol", "dave")) as world:
        world.configure(moderation={"commands_per_minute": LIMIT}, ops={"listen": "127.0.0.1:0"})
        async with world.running_bot() as bot:
            world.ops = await ops_address(bot)
            yield world


async def get(world: World, path: str) -> tuple[int, str]:
    return await ops_get(world.ops, path)


async def metrics(world: World) -> Samples:
    return await read_metrics(world.ops)


async def test_health_and_metrics_after_one_imagine(world: World) -> None:
    interaction = await world.server.invoke(
        "imagine", user=world.alice, channel=world.art, options={"prompt": "a kite", "steps": 2}
    )
    result = await wait_result(interaction)
    # The image metric counts delivered images: it moves once the post is recorded, just
    # after the message appears.
    await world.bot.wait_for_line(rf"job {job_id_of(result)}: delivered", within=30)
    async with aiohttp.ClientSession() as http, http.get(world.ops + "/healthz") as response:
        body = await response.json()
        assert response.status == 200, body
        assert body == {
            "ok": True,
            "gateway": True,
            "engine": True,
            "database": True,
            "backend": {"kind": "local", "replicas_alive": 1},
        }
    samples = await metrics(world)
    assert samples[("imagine_images_generated_total", ())] >= 1
    assert samples[("imagine_batch_images_count", ())] >= 1  # engine stats, read at scrape
    assert samples[("imagine_step_seconds_count", ())] >= 1
    assert samples[("imagine_first_answer_seconds_count", ())] >= 1
    assert samples[("imagine_queue_depth", ())] == 0
    assert samples[("imagine_replicas_alive", ())] == 1  # the local engine
    assert ("imagine_event_loop_lag_seconds_count", ()) in samples


async def test_a_flood_from_one_user_is_refused_and_does_not_slow_another(world: World) -> None:
    server = world.server
    before = (await metrics(world)).get(
        ("imagine_refusals_total", (("reason", "rate_limited"),)), 0.0
    )
    # Bob floods /info while Alice asks for an image.
    alice = await server.invoke(
        "imagine", user=world.alice, channel=world.art, options={"prompt": "a pier", "steps": 2}
    )
    flood = await asyncio.gather(
        *(server.invoke("info", user=world.bob, channel=world.art) for _ in range(LIMIT + 3))
    )
    texts = [(await i.wait_for_original()).content for i in flood]
    slow = [t for t in texts if "Slow down" in t]
    assert len(slow) == 3 and all(RELATIVE_TIME.search(t) for t in slow), texts
    assert all(i.ephemeral for i in flood)
    # Over the limit, his /imagine is refused too, privately, and recorded in the ledger.
    refused = await server.invoke(
        "imagine", user=world.bob, channel=world.art, options={"prompt": "spam"}
    )
    text = (await refused.wait_for_original()).content
    assert refused.ephemeral and "Slow down" in text and RELATIVE_TIME.search(text)
    # Alice is not slowed: her image is delivered.
    result = await wait_result(alice)
    assert result.pinged_user_ids == {world.alice.id}

    async with read_ledger(world.tmp) as ledger:
        jobs = await ledger.jobs_for_user(world.guild.id, world.bob.id)
        assert [(j.status, j.refusal_reason) for j in jobs] == [
            (JobStatus.REFUSED, RefusalReason.RATE_LIMITED)
        ]
    after = (await metrics(world))[("imagine_refusals_total", (("reason", "rate_limited"),))]
    assert after - before == 4  # three /info and one /imagine


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"prompt": "a cat", "size": "huge"}, "`size` must be one of square, portrait, landscape"),
        ({"prompt": "a cat", "steps": -5, "count": 99}, "between 1 and"),
        ({"prompt": "\u200b\u202e\x00 \u2066"}, "The prompt is empty"),
    ],
)
async def test_forged_options_get_a_clear_private_message(
    world: World, options: dict[str, object], expected: str
) -> None:
    """Payloads Discord itself would not send (it enforces the declared choices and ranges)."""
    interaction = await world.server.invoke(
        "imagine", user=world.carol, channel=world.art, options=options, validate=False
    )
    message = await interaction.wait_for_original()
    assert interaction.ephemeral and expected in message.content, message.content
    assert "error `" not in message.content and message.pinged_user_ids == set()
    assert not message.custom_ids  # no job was queued


async def test_a_deleted_database_file_is_noticed_and_nothing_is_charged(world: World) -> None:
    """Last in the module: the SQLite file is deleted under the running bot (an operator's
    `rm`, a restore). SQLite would go on writing into the deleted file; the bot notices,
    /healthz says the database is down, and /imagine refuses clearly without charging."""
    (world.tmp / "imagine.db").unlink()
    async with aiohttp.ClientSession() as http, http.get(world.ops + "/healthz") as response:
        body = await response.json()
    assert response.status == 503 and body["database"] is False and body["engine"] is True
    interaction = await world.server.invoke(
        "imagine", user=world.dave, channel=world.art, options={"prompt": "a lost file"}
    )
    message = await interaction.wait_for_original()
    assert interaction.ephemeral and "nothing was charged" in message.content
    assert "error `" not in message.content and not message.custom_ids
    assert "deleted or replaced" in "\n".join(world.bot.lines)
