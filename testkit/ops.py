"""A running bot's ops endpoint (`[ops] listen = "127.0.0.1:0"`): its address, read from the
bot's log, and its `/metrics` parsed, for tests that check what an operator would see."""

from __future__ import annotations

import re

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from .process import BotProcess

__all__ = ["Samples", "buckets_above", "get", "ops_address", "read_metrics"]

#: Each sample by (name, sorted labels).
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def ops_address(bot: BotProcess, within: float = 60) -> str:
    """The endpoint's base URL, once the bot has logged the port it got."""
    line = await bot.wait_for_line(r"ops endpoint on http://127\.0\.0\.1:\d+", within)
    found = re.search(r"127\.0\.0\.1:(\d+)", line)
    assert found is not None
    return f"http://127.0.0.1:{found.group(1)}"


async def get(base: str, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(base + path) as response:
        return response.status, await response.text()


async def read_metrics(base: str) -> Samples:
    status, text = await get(base, "/metrics")
    assert status == 200, text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def buckets_above(before: Samples, after: Samples, histogram: str, le: str) -> tuple[int, int]:
    """Of the observations `histogram` made between two readings: how many were above the
    bucket bound `le`, and how many there were in all."""

    def count(samples: Samples, key: tuple[str, tuple[tuple[str, str], ...]]) -> float:
        return samples.get(key, 0.0)

    total_key = (f"{histogram}_count", ())
    bucket_key = (f"{histogram}_bucket", (("le", le),))
    total = count(after, total_key) - count(before, total_key)
    within = count(after, bucket_key) - count(before, bucket_key)
    return int(total - within), int(total)
