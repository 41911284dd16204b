"""Secrets and hostile start-up input: the token never shows, a token in a readable file is
refused, the environment wins, and a database that cannot be reached is one clear line.

Each runs the real `imagine-bot run` as a subprocess; a rejected token is refused by the
Discord test server as Discord refuses one (401 on `GET /users/@me`).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from bot.config import parse_config
from bot.ledger import upgrade_to_head
from testkit.config import toml_value, write_config
from testkit.discord_server import DiscordTestServer
from testkit.process import run_once

from .test_startup import assert_one_clear_line, minimal_config

SECRET = "MTIzNDU2.secret-token.abcdef"


def with_inline_token(path: Path, token: object, mode: int) -> Path:
    """Add `[discord] token = ...` to a config written by `minimal_config`."""
    text = path.read_text().replace("[discord]\n", f"[discord]\ntoken = {toml_value(token)}\n")
    path.write_text(text)
    path.chmod(mode)
    return path


async def test_a_bad_config_never_shows_the_token(tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.toml", {"quota": {"daily_images": -1}})
    code, output = await run_once(config, token=SECRET)
    assert code == 2 and SECRET not in output
    assert_one_clear_line(output, "daily_images")

    # A token of the wrong type is named, never echoed.
    bad = with_inline_token(minimal_config(tmp_path), [SECRET], 0o600)
    code, output = await run_once(bad, token=None)
    assert code == 2 and SECRET not in output
    assert_one_clear_line(output, "[discord] token must be a string")


@pytest.mark.skipif(os.name == "nt", reason="POSIX file modes")
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
async def test_an_inline_token_in_a_readable_file_is_refused(tmp_path: Path, mode: int) -> None:
    config = with_inline_token(minimal_config(tmp_path), SECRET, mode)
    code, output = await run_once(config, token=None)
    assert code == 2 and SECRET not in output
    assert_one_clear_line(output, "chmod 600", "DISCORD_TOKEN", f"{mode:o}")
    assert not (tmp_path / "imagine.db").exists()  # refused before anything started


async def test_an_inline_token_in_a_private_file_warns_and_is_used(tmp_path: Path) -> None:
    async with DiscordTestServer() as server:
        server.create_application("imagine-bot")
        config = with_inline_token(minimal_config(tmp_path, server.api_base_url), SECRET, 0o600)
        code, output = await run_once(config, token=None)
        assert code == 2 and SECRET not in output  # Discord rejected it: used, not shown
        assert "the bot token is written in" in output and "prefer" in output
        assert_one_clear_line(output, "Discord rejected the bot token in [discord] token")
        assert [r.status for r in server.requests_to("GET", r"^/users/@me$")] == [401]
        server.assert_clean()


async def test_the_environment_variable_wins_over_the_inline_token(tmp_path: Path) -> None:
    async with DiscordTestServer() as server:
        app = server.create_application("imagine-bot")
        # The file holds the valid token, the environment a rejected one: the environment's
        # is the one sent (a 401), so the file's was not used.
        config = with_inline_token(minimal_config(tmp_path, server.api_base_url), app.token, 0o600)
        code, output = await run_once(config, token=SECRET)
        assert code == 2 and SECRET not in output and app.token not in output
        assert_one_clear_line(output, "Discord rejected the bot token in $DISCORD_TOKEN")
        assert [r.status for r in server.requests_to("GET", r"^/users/@me$")] == [401]
        server.assert_clean()
    assert parse_config({"discord": {"token": "file"}}).resolve_token({"DISCORD_TOKEN": "env"}) == (
        "env"
    )


async def test_an_unreachable_database_stops_start_up_with_one_line(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "config.toml",
        {
            "discord": {"api_base_url": "http://127.0.0.1:9/api/v10"},
            "database": {"url": "postgresql+asyncpg://imagine:pw-secret@127.0.0.1:1/imagine"},
            "engine": {"model": "builtin:tiny", "cache_dir": str(tmp_path / "models")},
        },
    )
    code, output = await run_once(config, token=SECRET)
    assert code == 2 and SECRET not in output and "pw-secret" not in output
    assert_one_clear_line(output, "cannot open the database", "127.0.0.1:1", "[database] url")
    assert "loading model" not in output


async def test_a_database_from_a_newer_version_stops_start_up_with_one_line(
    tmp_path: Path,
) -> None:
    """A downgrade of the bot must not write into a schema it does not know."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'newer.db'}"
    await upgrade_to_head(url)
    with sqlite3.connect(tmp_path / "newer.db") as db:
        db.execute("UPDATE alembic_version SET version_num = '9999'")
    config = write_config(
        tmp_path / "config.toml",
        {
            "discord": {"api_base_url": "http://127.0.0.1:9/api/v10"},
            "database": {"url": url},
            "engine": {"model": "builtin:tiny", "cache_dir": str(tmp_path / "models")},
        },
    )
    code, output = await run_once(config, token=SECRET)
    assert code == 2 and SECRET not in output
    assert_one_clear_line(output, "schema (revision 9999) is newer", "upgrade imagine-bot")
    with sqlite3.connect(tmp_path / "newer.db") as db:  # left exactly as it was
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [("9999",)]
