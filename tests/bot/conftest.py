"""Fixtures of the bot's end-to-end tests. The helpers they use (the Discord test server, the
bot process, the world builder) live in `testkit`; each test module builds its own `world`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from testkit.world import World


@pytest.fixture
def clean_world(world: World) -> Iterator[None]:
    """After each test: the bot's output during it (shown on failure), and no Discord rule
    broken (`assert_clean`). Modules with one bot for all their tests use it."""
    start = len(world.bot.lines)
    yield
    print("bot output during the test:", *world.bot.lines[start:], sep="\n")  # on failure
    world.server.assert_clean()
