"""End to end: a gateway that takes the IDENTIFY and never sends READY.

discord.py would wait forever on that connection. The bot gives READY `[discord]
ready_timeout` seconds, then reconnects; until it is ready, `/healthz` says the gateway is
not (so a supervisor sees a bot that is up but useless).
"""

from __future__ import annotations

import asyncio
import re

import aiohttp

from testkit.jobs import wait_result
from testkit.world import NewWorld

READY_TIMEOUT = 3  # seconds, in the bot's config


async def test_no_ready_means_reconnect_and_not_healthy_meanwhile(new_world: NewWorld) -> None:
    async with new_world(guild="Ready Club", users=("alice",)) as world:
        world.configure(discord={"ready_timeout": READY_TIMEOUT}, ops={"listen": "127.0.0.1:0"})
        gateway = world.server.gateway
        gateway.withhold_ready = 2  # the first two sessions hang after IDENTIFY
        starting = asyncio.create_task(world.start_bot())
        try:
            await world.server.wait_until(
                lambda: gateway.withheld_identifies >= 1,
                timeout=120,
                what="a first IDENTIFY left without READY",
            )
            line = await world.bot.wait_for_line(r"ops endpoint on http://127\.0\.0\.1:\d+", 60)
            await world.bot.wait_for_line(r"no READY from Discord within 3 s", 30)
            port = re.search(r"127\.0\.0\.1:(\d+)", line).group(1)  # type: ignore[union-attr]
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
                    body = await response.json()
                assert response.status == 503 and body["gateway"] is False, body
                bot = await starting  # connected after two timeouts, with a third IDENTIFY
                assert gateway.withheld_identifies == 2
                reconnects = [x for x in bot.lines if "no READY from Discord within 3 s" in x]
                assert len(reconnects) == 2, bot.output[-3000:]
                await bot.wait_for_line(r"connected as", 30)
                interaction = await world.server.invoke(
                    "imagine", user=world.alice, options={"prompt": "a late start", "steps": 2}
                )
                await wait_result(interaction)
                async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
                    body = await response.json()
                assert response.status == 200, body
        finally:
            if not starting.done():
                starting.cancel()
            assert await world.bot.stop() == 0, world.bot.output[-3000:]
