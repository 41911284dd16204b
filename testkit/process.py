"""The real bot, started the way an operator starts it, against the Discord test server.

`BotProcess` runs `imagine-bot run --config <file>` as a subprocess with the token in
`DISCORD_TOKEN`; the test server (in the caller's event loop) plays Discord. Waits never sleep:
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
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from .discord_server import DiscordTestServer

#: `$XDG_STATE_HOME` of a bot started here, in its config file's folder: a config without
#: `[paths] state_dir` keeps its state in `<config folder>/state-home/imagine-bot`.
STATE_HOME = "state-home"


def bot_command() -> list[str]:
    """`imagine-bot` from this environment (as installed by `pip install -e .`)."""
    exe = Path(sys.executable).with_name("imagine-bot")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("imagine-bot")
    return [found] if found else [sys.executable, "-m", "bot"]


def bot_env(
    token: str | None,
    *,
    pythonpath: Iterable[str | Path] = (),
    extra: Mapping[str, str] | None = None,
    state_home: Path | None = None,
) -> dict[str, str]:
    """This environment for the bot: `token` as `DISCORD_TOKEN` (none: unset), `pythonpath`
    put in front of `PYTHONPATH`, then `extra` on top. The state folder is never the
    caller's: `$IMAGINE_BOT_STATE_DIR` is not passed on, and `$XDG_STATE_HOME` (the default
    state folder's parent) is `state_home`, a folder of the test's own."""
    hidden = {"DISCORD_TOKEN", "IMAGINE_BOT_STATE_DIR", "XDG_STATE_HOME"}
    env = {k: v for k, v in os.environ.items() if k not in hidden}
    if state_home is not None:
        env["XDG_STATE_HOME"] = str(state_home)
    env["PYTHONUNBUFFERED"] = "1"
    # Two cores are shared by pytest, the test server and the bot: torch's default of one
    # thread per core makes its threads spin against each other (jobs 10x slower) and
    # starves the bot's event loop.
    env["OMP_NUM_THREADS"] = "1"
    paths = [str(p) for p in pythonpath]
    if paths:
        env["PYTHONPATH"] = os.pathsep.join([*paths, *filter(None, [env.get("PYTHONPATH")])])
    env.update(extra or {})
    if token is not None:
        env["DISCORD_TOKEN"] = token
    return env


class BotProcess:
    """`imagine-bot run --config` as a child process; its output is kept for assertions.

    `command` replaces `imagine-bot` (a wrapper taking the same arguments); `pythonpath` and
    `env` are passed to `bot_env`.
    """

    def __init__(
        self,
        server: DiscordTestServer,
        config: Path,
        *,
        token: str | None,
        command: Sequence[str] | None = None,
        pythonpath: Iterable[str | Path] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.server = server
        self.config = config
        self.token = token
        self.command = list(command) if command is not None else bot_command()
        self.env = bot_env(
            token, pythonpath=pythonpath, extra=env, state_home=config.parent / STATE_HOME
        )
        self.lines: list[str] = []
        self.process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._waiter: asyncio.Task[int] | None = None

    async def start(self) -> BotProcess:
        self.process = await asyncio.create_subprocess_exec(
            *self.command,
            "run",
            "--config",
            str(self.config),
            cwd=self.config.parent,
            env=self.env,
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
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

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


async def run_once(
    config: Path,
    *,
    token: str | None,
    args: Iterable[str] = (),
    env: Mapping[str, str] | None = None,
) -> tuple[int, str]:
    """Run the CLI to completion (start-up failures); returns (exit code, all output).
    `env` goes on top of the bot's environment (`bot_env`)."""
    command = list(args) or [*bot_command(), "run", "--config", str(config)]
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=config.parent,
        env=bot_env(token, extra=env, state_home=config.parent / STATE_HOME),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace")


__all__ = ["STATE_HOME", "BotProcess", "bot_command", "bot_env", "run_once"]
