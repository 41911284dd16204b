"""Property-based: any TOML-shaped data gives a config or a `ConfigError`, never a crash."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.config import BotConfig, ConfigError, load_config, parse_config
from engine import EngineConfig

scalars = st.one_of(
    st.integers(-(2**40), 2**40), st.floats(allow_nan=False), st.booleans(), st.text(max_size=20)
)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.dictionaries(st.text(max_size=5), scalars, max_size=2),
)
keys = st.sampled_from(
    [
        "model",
        "max_batch_size",
        "guild_ids",
        "url",
        "daily_images",
        "listen",
        "token_env",
        "flagged_images",
        "blocked_words",
        "safety_checker",
        "batch_wait_ms",
        "nonsense",
    ]
)
sections = st.sampled_from(["discord", "database", "engine", "quota", "moderation", "ops", "extra"])
documents = st.dictionaries(
    sections, st.one_of(st.dictionaries(keys, values, max_size=4), scalars), max_size=4
)


@settings(max_examples=300, deadline=None)
@given(data=documents)
def test_any_document_gives_a_config_or_a_clear_error(data: dict[str, object]) -> None:
    try:
        config = parse_config(data)  # type: ignore[arg-type]
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)
        return
    assert isinstance(config, BotConfig)
    assert isinstance(config.engine, EngineConfig)  # checked by the engine's own rules


@settings(max_examples=100, deadline=None)
@given(raw=st.binary(max_size=200))
def test_any_file_bytes_give_a_config_or_a_clear_error(
    raw: bytes, tmp_path_factory: pytest.TempPathFactory
) -> None:
    path: Path = tmp_path_factory.mktemp("cfg") / "config.toml"
    path.write_bytes(raw)
    try:
        load_config(path)
    except ConfigError as exc:
        assert str(path) in str(exc)
    else:
        tomllib.loads(raw.decode())  # it parsed, so it was valid TOML
