"""Fixtures shared by every test package: the offline tiny model, built once per run, and
the end-to-end world builder (`testkit.world.open_world`) bound to it."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

    from testkit.pg import PgServer
    from testkit.world import NewWorld

# Tests share two cores between pytest, the Discord test server and bot subprocesses; torch's
# default of one thread per core makes its threads spin against each other (4-10x slower).
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder holding the saved `builtin:tiny` pipelines (reused across runs if set in env)."""
    env = os.environ.get("IMAGINE_BOT_CACHE")
    path = Path(env) if env else tmp_path_factory.mktemp("model-cache")
    from engine.tiny import builtin_folder

    builtin_folder("builtin:tiny", path)
    return path


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The PostgreSQL server of $IMAGINE_BOT_TEST_PG_URL (skips without it)."""
    from testkit.pg import PG_ENV, PG_SKIP, PgServer

    url = os.environ.get(PG_ENV)
    if not url:
        pytest.skip(PG_SKIP)
    with PgServer.session(url) as server:
        yield server


@pytest.fixture(scope="module")
def new_world(
    request: pytest.FixtureRequest, model_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> NewWorld:
    """`open_world` with the tiny model and a folder of this module's own:
    `async with new_world(users=("alice",)) as world: ...` (see `testkit.world`)."""
    from testkit.world import open_world

    tmp = tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2])
    return functools.partial(open_world, tmp, model_cache)
