"""One world for end-to-end runs: the Discord test server, a guild with its channels and
members, a config file (the tiny model, a SQLite file) and the real bot process.

    async with open_world(tmp, model_cache, users=("alice", "bob")) as world:
        world.add_channel("after-dark", nsfw=True)        # what is special, if anything
        world.configure(moderation={"flagged_images": "spoiler"})
        async with world.running_bot():
            job_id, progress = await world.imagine(world.alice, "a cat")

Users, channels and extra guilds are found by name: `world.users["alice"]` or `world.alice`,
`world.after_dark` (a `-` in a name reads `_`). A test module may keep its own things on the
world too (`world.ops = url`).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

from .config import bot_config
from .discord_server import Channel, DiscordTestServer, Guild, Message, Role, User
from .jobs import job_id_of
from .process import BotProcess

#: `open_world` with its folder and model cache given (the tests' `new_world` fixture).
NewWorld = Callable[..., contextlib.AbstractAsyncContextManager["World"]]


def _key(name: str) -> str:
    return name.replace("-", "_")


class World:
    """What `open_world` built; `configure` writes the config, `start_bot` starts the bot."""

    def __init__(
        self, server: DiscordTestServer, guild: Guild, tmp: Path, model_cache: Path
    ) -> None:
        self.server = server
        self.guild = guild
        """The guild every user is a member of (the one `configure` syncs commands to)."""
        self.tmp = tmp
        """The bot's folder: its config file and its SQLite database."""
        self.model_cache = model_cache
        self.users: dict[str, User] = {}
        self.channels: dict[str, Channel] = {}
        """By name; the first is where `imagine` runs by default."""
        self.guilds: dict[str, Guild] = {}
        """Guilds besides `guild` (`add_guild`)."""
        self.config: Path | None = None
        self._bot: BotProcess | None = None

    def __getattr__(self, name: str) -> Any:
        for table in ("users", "channels", "guilds"):
            found = self.__dict__.get(table, {}).get(name)
            if found is not None:
                return found
        raise AttributeError(f"the world has no user, channel or guild {name!r}")

    # -- the Discord side ------------------------------------------------------------------------

    @property
    def token(self) -> str:
        return self.server.application.token

    def add_user(self, name: str, *, roles: Iterable[Role] = ()) -> User:
        """A user, a member of `guild` (with `roles`) and of every extra guild."""
        user = self.server.create_user(name)
        self.guild.add_member(user, roles=roles)
        for guild in self.guilds.values():
            guild.add_member(user)
        self.users[_key(name)] = user
        return user

    def add_channel(self, name: str, *, guild: Guild | None = None, nsfw: bool = False) -> Channel:
        """A text channel of `guild` (by default the world's guild)."""
        channel = (guild or self.guild).create_text_channel(name, nsfw=nsfw)
        self.channels[_key(name)] = channel
        return channel

    def add_guild(self, key: str, name: str, **options: Any) -> Guild:
        """Another guild (`options` as for `DiscordTestServer.create_guild`), with every user
        as a member."""
        guild = self.server.create_guild(name, **options)
        for user in self.users.values():
            guild.add_member(user)
        self.guilds[key] = guild
        return guild

    # -- the bot ---------------------------------------------------------------------------------

    def configure(self, *, guild_ids: Iterable[int] | None = None, **sections: Any) -> Path:
        """Write the bot's config (`testkit.config.bot_config`, `sections` on top); commands
        are synced to `guild` unless `guild_ids` says otherwise (`[]`: globally)."""
        ids = [self.guild.id] if guild_ids is None else guild_ids
        self.config = bot_config(self.tmp, self.server, self.model_cache, guild_ids=ids, **sections)
        return self.config

    @property
    def bot(self) -> BotProcess:
        """The bot started last."""
        assert self._bot is not None, "start_bot() first"
        return self._bot

    async def start_bot(self, **options: Any) -> BotProcess:
        """Start `imagine-bot run` (`options` as for `BotProcess`); return once it is connected
        with a session of its own (one IDENTIFY more than before)."""
        assert self.config is not None, "configure() first"
        identified = self.server.gateway.identify_count
        self._bot = BotProcess(self.server, self.config, token=self.token, **options)
        await self._bot.start()
        await self._bot.wait_ready(identified + 1)
        return self._bot

    @contextlib.asynccontextmanager
    async def running_bot(self, **options: Any) -> AsyncIterator[BotProcess]:
        """A bot for the block (`start_bot`); then the bot running at the end (tests may have
        restarted it) gets SIGTERM and must exit 0, without having logged its token."""
        try:
            yield await self.start_bot(**options)
        finally:
            bot = self.bot
            code = await bot.stop()
        assert code == 0, bot.output[-3000:]
        assert self.token not in bot.output  # the token is never logged

    # -- users doing things ----------------------------------------------------------------------

    async def imagine(
        self, user: User, prompt: str, *, channel: Channel | None = None, **options: object
    ) -> tuple[int, Message]:
        """Run /imagine (2 steps unless `options` say otherwise) in `channel` (the first one);
        once the job is queued, return its id and its progress message."""
        where = channel or next(iter(self.channels.values()))
        interaction = await self.server.invoke(
            "imagine", user=user, channel=where, options={"prompt": prompt, "steps": 2, **options}
        )
        progress = await interaction.wait_for_original(lambda m: bool(m.custom_ids))
        return job_id_of(progress), progress

    def results_for(self, job_id: int) -> list[Message]:
        """Every message ever posted in the world's channels with this job's images (deleted
        ones too)."""
        return [
            m
            for channel in self.channels.values()
            for m in self.server.messages_in(channel, include_deleted=True)
            if any(
                a.filename.endswith(".png") and f"-{job_id}-" in a.filename for a in m.attachments
            )
        ]


@contextlib.asynccontextmanager
async def open_world(
    tmp: Path,
    model_cache: Path,
    *,
    guild: str = "Art Club",
    channels: Iterable[str] = ("art",),
    users: Iterable[str] = (),
    default_timeout: float = 15.0,
    heartbeat_interval_ms: int = 41_250,
    clean: bool = True,
    shard_count: int = 1,
) -> AsyncIterator[World]:
    """A started Discord test server (its waits time out after `default_timeout` s) with the bot's
    application, `guild`, its text `channels` and `users` as members; the bot's files go in
    `tmp`. On the way out a bot still running is killed and, with `clean`, the server's
    `assert_clean()` is checked. `shard_count`: the gateway's shards (guilds are on shard
    `(guild_id >> 22) % shard_count`)."""
    async with DiscordTestServer(
        default_timeout=default_timeout,
        heartbeat_interval_ms=heartbeat_interval_ms,
        shard_count=shard_count,
    ) as server:
        server.create_application("imagine-bot")
        world = World(server, server.create_guild(guild), tmp, model_cache)
        for name in channels:
            world.add_channel(name)
        for name in users:
            world.add_user(name)
        try:
            yield world
        finally:
            bot = world._bot
            if bot is not None and bot.running:  # a test failed with it: do not leave it behind
                await bot.stop(signal.SIGKILL)
        if clean:
            server.assert_clean()


__all__ = ["NewWorld", "World", "open_world"]
