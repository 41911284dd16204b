"""Fixtures shared by every test package: the offline tiny model, built once per run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
