"""Start-up failures an operator can fix end with one line saying what to fix, and exit 2.

Each runs the real command line (`imagine-bot run --config ...`, or the `python -m bot
--config ...` shorthand) as a subprocess; the rejected token is refused by the Discord test
server exactly as Discord refuses one (401 on `GET /users/@me`).
"""

from __future__ import annotations

import shutil
import sys
import tomllib
from pathlib import Path

from engine.tiny import builtin_folder
from testkit.config import database_url, write_config
from testkit.discord_server import DiscordTestServer
from testkit.process import run_once


def assert_one_clear_line(output: str, *expected: str) -> str:
    """The failure is the last line, the only one from imagine-bot, without a traceback."""
    lines = [line for line in output.splitlines() if line.strip()]
    ours = [line for line in lines if line.startswith("imagine-bot:")]
    assert len(ours) == 1 and lines[-1] == ours[0], output
    assert "Traceback" not in output, output
    for text in expected:
        assert text in ours[0], ours[0]
    return ours[0]


def minimal_config(tmp_path: Path, api: str = "http://127.0.0.1:9/api/v10") -> Path:
    return write_config(
        tmp_path / "config.toml",
        {
            "discord": {"api_base_url": api},
            "database": {"url": database_url(tmp_path)},
            "engine": {"model": "builtin:tiny", "cache_dir": str(tmp_path / "models")},
        },
    )


async def test_a_missing_config_file_says_how_to_make_one(tmp_path: Path) -> None:
    code, output = await run_once(tmp_path / "config.toml", token="x")
    assert code == 2
    assert_one_clear_line(output, "config.toml", "copy config.example.toml to config.toml")


async def test_a_bad_config_value_names_the_key(tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.toml", {"quota": {"daily_images": -1}})
    code, output = await run_once(config, token="x")
    assert code == 2
    assert_one_clear_line(output, "[quota] daily_images must be 0 or more")


async def test_a_missing_token_names_the_environment_variable(tmp_path: Path) -> None:
    config = minimal_config(tmp_path)
    # The `python -m bot --config` shorthand for `imagine-bot run --config`.
    args = [sys.executable, "-m", "bot", "--config", str(config)]
    code, output = await run_once(config, token=None, args=args)
    assert code == 2
    assert_one_clear_line(output, "no bot token", "DISCORD_TOKEN")
    assert not (tmp_path / "imagine.db").exists()  # nothing was started


async def test_a_rejected_token_stops_before_loading_the_model(tmp_path: Path) -> None:
    async with DiscordTestServer() as server:
        server.create_application("imagine-bot")
        config = minimal_config(tmp_path, server.api_base_url)
        secret = "not-the-token.abc123"
        code, output = await run_once(config, token=secret)
        assert code == 2
        assert_one_clear_line(output, "Discord rejected the bot token in $DISCORD_TOKEN")
        assert secret not in output  # the token is never printed
        assert "loading model" not in output
        assert [r.status for r in server.requests_to("GET", r"^/users/@me$")] == [401]
        assert not (tmp_path / "imagine.db").exists()  # checked before the database is made
        server.assert_clean()


async def test_a_token_no_bot_token_could_be_is_one_line(tmp_path: Path) -> None:
    """The README's placeholder ('the token'), or two lines pasted: one line, before Discord
    is asked (aiohttp refused a line break in a header with a traceback)."""
    config = minimal_config(tmp_path)
    for secret in ("the token", "MTk4.Cl2FMQ\nZnCjm1XVW7"):
        code, output = await run_once(config, token=secret)
        assert code == 2
        assert_one_clear_line(
            output,
            "the bot token in $DISCORD_TOKEN has a space, line break or other character",
            "copy the token again from the developer portal",
        )
        assert "Cl2FMQ" not in output  # a token, even a bad one, is never printed
    assert not (tmp_path / "imagine.db").exists()


async def test_a_model_that_cannot_load_stops_before_any_command_is_shown(
    tmp_path: Path, model_cache: Path
) -> None:
    """The token is checked first (cheap), then the model loads; only then are commands
    registered and the gateway joined, so users never see commands that cannot work."""
    local = tmp_path / "my-model"
    shutil.copytree(builtin_folder("builtin:tiny", model_cache), local)
    (local / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"cut off")
    async with DiscordTestServer() as server:
        app = server.create_application("imagine-bot")
        config = minimal_config(tmp_path, server.api_base_url)
        data = tomllib.loads(config.read_text())
        data["engine"]["model"] = str(local)
        write_config(config, data)
        code, output = await run_once(config, token=app.token)
        assert code == 2
        assert_one_clear_line(output, f"the model folder {local} cannot be loaded")
        # The token is checked before the database, then the bot logs in: no 401 anywhere.
        assert [r.status for r in server.requests_to("GET", r"^/users/@me$")] == [200, 200]
        assert server.requests_to("PUT", r"/commands$") == []  # no command was registered
        assert server.gateway.identify_count == 0  # never went online
        server.assert_clean()
