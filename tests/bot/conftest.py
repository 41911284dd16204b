"""The real bot, started the way an operator starts it, against the Discord test server.

`BotProcess` runs `imagine-bot run --config <file>` as a subprocess with the token in
`DISCORD_TOKEN`; the test server (in the test's event loop) plays Discord. Waits never sleep:
they re-check on every server change, and the bot's output lines count as changes too. A bot
that exits while a test waits fails the wait at once with its last output.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bot.ledger import JobRecord, Ledger, QuotaPolicy, open_ledger
from tests.discord_server import DiscordTestServer, Interaction, Message

#: Seconds a test waits for a job to be delivered (the tiny model on 2 busy CPU cores).
JOB_TIMEOUT = 90.0


def bot_command() -> list[str]:
    """`imagine-bot` from this environment (as installed by `pip install -e .`)."""
    exe = Path(sys.executable).with_name("imagine-bot")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("imagine-bot")
    return [found] if found else [sys.executable, "-m", "bot"]


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(value)


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    lines: list[str] = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in values.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def bot_config(
    tmp: Path,
    server: DiscordTestServer,
    model_cache: Path,
    *,
    guild_ids: Iterable[int],
    **sections: dict[str, Any],
) -> Path:
    """A config for the test server, the tiny model and a SQLite file in `tmp`."""
    base: dict[str, dict[str, Any]] = {
        "discord": {"api_base_url": server.api_base_url, "guild_ids": list(guild_ids)},
        "database": {"url": database_url(tmp)},
        "engine": {
            "model": "builtin:tiny",
            "cache_dir": str(model_cache),
            "safety_checker": True,
            "max_batch_size": 4,
            "batch_wait_ms": 20,
        },
        "quota": {"daily_images": 25, "max_queued_per_user": 2},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return write_config(tmp / "config.toml", base)


def database_url(tmp: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp / 'imagine.db'}"


def bot_env(token: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DISCORD_TOKEN"}
    env["PYTHONUNBUFFERED"] = "1"
    # Two cores are shared by pytest, the test server and the bot: torch's default of one
    # thread per core makes its threads spin against each other (jobs 10x slower) and
    # starves the bot's event loop.
    env["OMP_NUM_THREADS"] = "1"
    if token is not None:
        env["DISCORD_TOKEN"] = token
    return env


class BotProcess:
    """`imagine-bot run --config` as a child process; its output is kept for assertions."""

    def __init__(self, server: DiscordTestServer, config: Path, *, token: str | None) -> None:
        self.server = server
        self.config = config
        self.token = token
        self.lines: list[str] = []
        self.process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._waiter: asyncio.Task[int] | None = None

    async def start(self) -> BotProcess:
        self.process = await asyncio.create_subprocess_exec(
            *bot_command(),
            "run",
            "--config",
            str(self.config),
            cwd=self.config.parent,
            env=bot_env(self.token),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        self._reader = asyncio.create_task(self._read())
        self._waiter = asyncio.create_task(self.process.wait(), name="imagine-bot process")
        # Waits on the server fail at once (with the output) if the bot exits.
        self.server.watch(self._waiter, _Tail(self.lines))  # type: ignore[arg-type]
        return self

    async def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        async for raw in self.process.stdout:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))
            self.server.notify()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    async def wait_ready(self, identify_count: int = 1, within: float = 120.0) -> None:
        """Connected to the gateway: slash commands can be sent from now on."""
        await self.server.wait_until(
            lambda: (
                self.server.gateway.identify_count >= identify_count
                and self.server.gateway.connected
            ),
            timeout=within,
            what="the bot to connect to the gateway",
            seen=lambda: self.output[-4000:],
        )

    async def wait_for_line(self, pattern: str, within: float = 30.0) -> str:
        regex = re.compile(pattern)
        return await self.server.wait_until(
            lambda: next((line for line in self.lines if regex.search(line)), None),
            timeout=within,
            what=f"a bot output line matching {pattern!r}",
            seen=lambda: self.output[-4000:],
        )

    async def exited(self, within: float = 60.0) -> int:
        assert self._waiter is not None
        code = await asyncio.wait_for(asyncio.shield(self._waiter), within)
        if self._reader is not None:
            await self._reader
        return code

    def unwatch(self) -> None:
        if self._waiter is not None:
            self.server.unwatch(self._waiter)

    async def stop(self, sig: int = signal.SIGTERM, within: float = 60.0) -> int:
        """Send `sig` and wait for the exit code (SIGKILL after `within` seconds)."""
        assert self.process is not None
        self.unwatch()
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)
        try:
            return await self.exited(within)
        except TimeoutError:
            self.process.kill()
            await self.exited(within)
            raise AssertionError(f"the bot ignored signal {sig}:\n{self.output[-4000:]}") from None


class _Tail:
    """The watched task's name in the server's messages: the bot's last output lines."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines

    def __str__(self) -> str:
        return "the imagine-bot process (last output:\n" + "\n".join(self.lines[-30:]) + "\n)"


async def run_once(config: Path, *, token: str | None, args: Iterable[str] = ()) -> tuple[int, str]:
    """Run the CLI to completion (start-up failures); returns (exit code, all output)."""
    command = list(args) or [*bot_command(), "run", "--config", str(config)]
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=config.parent,
        env=bot_env(token),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace")


@contextlib.asynccontextmanager
async def read_ledger(tmp: Path) -> Any:
    """The bot's database, opened by the test as a second reader (the real ledger code)."""
    async with open_ledger(database_url(tmp), QuotaPolicy(), migrate=False) as ledger:
        yield ledger


async def job_of(ledger: Ledger, job_id: int) -> JobRecord:
    job = await ledger.get_job(job_id)
    assert job is not None, f"job {job_id} is not in the database"
    return job


JOB_ID = re.compile(r"imagine:(?:cancel|reroll|delete):(\d+)")


def job_id_of(message: Message) -> int:
    """The job id in a message's buttons (`imagine:<action>:<id>`)."""
    for custom_id in message.custom_ids:
        found = JOB_ID.fullmatch(custom_id)
        if found:
            return int(found.group(1))
    raise AssertionError(f"no job button on {message!r}")


def result_of(interaction: Interaction) -> Message | None:
    """The public result message of an /imagine (a followup with images)."""
    return next(
        (m for m in interaction.followups if m.attachments and not m.ephemeral and not m.deleted),
        None,
    )


async def wait_result(interaction: Interaction, within: float = JOB_TIMEOUT) -> Message:
    return await interaction.wait_for(
        result_of, timeout=within, what="the images to be posted as a followup"
    )
