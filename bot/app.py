"""The composition root: `run_bot(config_path)` wires config, database, engine and Discord.

Start-up order, each step failing with one line and exit code 2 when the operator can fix it:

1. read the config and the token (from the environment variable it names; a token written in
   the config file is used only with a warning, and refused when others can read the file),
   and check the token with a REST login: a rejected one stops here, before a database file
   is created;
2. make the state folder (`[paths] state_dir`: the database's identity file, a relative
   SQLite file, stored images; never beside the config file, which may be read-only) and
   check it is writable; check the database is the one this configuration used
   (`ledger/identity.py`: a lost database is never replaced by an empty one), migrate it to
   head (refusing a schema newer than this version), open the ledger, and claim its lease: a
   second process on the same database stops here;
3. log the bot's client in over REST (nothing is shown to users yet);
4. load the model on the engine's worker thread (the event loop stays free): a model that
   cannot load stops here, before any command is registered with Discord;
5. register the slash commands, re-queue jobs a previous process left unfinished, then
   connect to the gateway (the bot shows online).

With `[ops] listen` set, `/healthz` and `/metrics` are served from step 2 until the end.

SIGINT/SIGTERM stop it gracefully: no new jobs, unfinished jobs stay in the ledger for the
next start, then the gateway, the engine and the database are closed in that order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import stat
import sys
import tempfile
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

import discord

from engine import Engine, EngineClient
from engine.cluster import RayEngine

from .config import BotConfig, ConfigError, load_config
from .images.store import ImageStore
from .jobs import Actions, JobService, recover
from .ledger import (
    DatabaseMarker,
    DatabaseMismatch,
    LeaseHeld,
    LeaseKeeper,
    Ledger,
    MarkerUnwritable,
    QuotaPolicy,
    SchemaTooNew,
    inspect_database,
    open_ledger,
    safe_url,
    upgrade_to_head,
)
from .moderation.guilds import GuildRules
from .ops.discord_http import HttpMeter, follow_gateway, point_discord_at
from .ops.health import HealthChecks, OpsServer
from .ops.heap import settle_heap
from .ops.metrics import Metrics, MetricsUpdater
from .services import Services
from .state_dir import STATE_DIR_ENV
from .surface.client import ImagineBot
from .timing.clock import DiscordClock
from .timing.throttle import EditThrottle, UserRateLimit

__all__ = ["StartupError", "run_bot"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class StartupError(Exception):
    """Start-up cannot go on; the message says what to fix (one line)."""


class _Stopped(Exception):
    """A stop signal arrived during start-up."""


class _NoVoiceWarning(logging.Filter):
    """discord.py warns at every start that voice is unavailable; this bot has no voice."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "voice will NOT be supported" not in record.getMessage()


def _quiet_logs() -> None:
    logging.getLogger("alembic").setLevel(logging.WARNING)  # migration chatter at each start
    logging.getLogger("discord.client").addFilter(_NoVoiceWarning())


def run_bot(config_path: str | Path) -> int:
    """Run the bot until SIGINT/SIGTERM; 0 after a clean stop, 2 when start-up failed."""
    _quiet_logs()
    config = load_config(config_path)
    _check_inline_token(config, Path(config_path))
    token = config.resolve_token()
    if not token:
        raise ConfigError(
            [
                f"no bot token: set the environment variable {config.discord.token_env} "
                "to your bot's token (Discord developer portal → your application → Bot)"
            ],
            str(config.path or config_path),
        )
    problem = config.token_problem(token)
    if problem is not None:
        raise ConfigError([problem], str(config.path or config_path))
    try:
        return asyncio.run(serve(config, token))
    except StartupError as exc:
        print(f"imagine-bot: {exc}", file=sys.stderr)
        return 2


def _check_inline_token(config: BotConfig, path: Path) -> None:
    """A token in the config file leaks with the file: warn, and refuse a file that group or
    others may read (POSIX modes only). The environment variable still wins when set."""
    if not config.discord.token.strip():
        return
    if os.name != "nt":
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                [
                    f"[discord] token is written in a file others can read (mode "
                    f"{stat.S_IMODE(mode):o}): run chmod 600 {path}, or better remove it and "
                    f"set the environment variable {config.discord.token_env}"
                ],
                str(path),
            )
    log.warning(
        "the bot token is written in %s; prefer the environment variable %s",
        path,
        config.discord.token_env,
    )


async def _until(stop: asyncio.Event, work: Awaitable[T]) -> T:
    """Await `work` unless a stop signal comes first (then cancel it and raise `_Stopped`)."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        raise _Stopped()
    return task.result()


def _install_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on Windows
            loop.add_signal_handler(sig, stop.set)


async def _check_token(config: BotConfig, token: str) -> None:
    """A REST login with a throwaway client before anything is created: a rejected token
    leaves no database file behind. Discord out of reach is not decided here: the database is
    checked first, and the real login says so."""
    http = discord.http.HTTPClient(None)
    try:
        await http.static_login(token)
    except discord.LoginFailure:
        raise StartupError(config.token_rejected()) from None
    except (discord.HTTPException, OSError):
        return
    finally:
        await http.close()


async def _login(bot: ImagineBot, config: BotConfig, token: str) -> None:
    try:
        await bot.login(token)
    except discord.LoginFailure:
        raise StartupError(config.token_rejected()) from None
    except (discord.HTTPException, OSError) as exc:
        raise StartupError(
            f"cannot reach Discord at {config.discord.api_base_url}: {exc}; "
            "check [discord] api_base_url and the network"
        ) from None
    await follow_gateway(bot.http, config.discord.api_base_url)


def _open_state_dir(config: BotConfig) -> Path:
    """Make the state folder and prove it writable before anything is written in it, so an
    unwritable one stops start-up with one line naming it (not as a database error)."""
    folder = config.paths.state_dir
    assert folder is not None, "a config read from a file has its state folder"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise StartupError(
            f"cannot write in the state folder {folder} ({exc.strerror or exc}): make it "
            f"writable by this user, or set [paths] state_dir (or ${STATE_DIR_ENV}) to a "
            "folder it can write"
        ) from None
    log.info("state folder: %s (%s)", folder, config.state_from)
    return folder


async def _prune_images(store: ImageStore, every: float = 3600.0) -> None:
    """Delete stored images past `[images] keep_days`, at start-up and then hourly."""
    while True:
        try:
            removed = await asyncio.to_thread(store.prune)
        except OSError as exc:
            log.warning("cannot prune %s: %s", store.root, exc)
        else:
            if removed:
                log.info("deleted %d stored image(s) older than %d days", removed, store.keep_days)
        await asyncio.sleep(every)


def _assemble(
    config: BotConfig, ledger: Ledger, engine: EngineClient
) -> tuple[ImagineBot, Services, JobService]:
    """The bot and what its parts share; the only place that knows the concrete client."""
    shards = config.discord.shards
    bot = ImagineBot(
        guild_ids=config.discord.guild_ids,
        shard_count=None if shards.everything else shards.count,
        shard_ids=None if shards.everything else shards.ids,
    )
    services = Services(
        config=config,
        ledger=ledger,
        engine=engine,
        rules=GuildRules(ledger, config.moderation, config.quota.daily_images),
        rate_limit=UserRateLimit(config.moderation.commands_per_minute),
        clock=DiscordClock(),
        edit_throttle=EditThrottle(),
        metrics=Metrics(),
        channels=bot,
        images=ImageStore(config.images.store_dir, keep_days=config.images.keep_days),
    )
    jobs = JobService(services)
    bot.attach(services, Actions(jobs))
    meter = HttpMeter(services.metrics)
    meter.install(bot.http)

    async def arrived(interaction: discord.Interaction) -> None:
        meter.arrived(interaction.id)

    bot.add_listener(arrived, "on_interaction")
    return bot, services, jobs


async def serve(config: BotConfig, token: str) -> int:
    """Start everything, run until stopped, close everything (see the module doc)."""
    stop = asyncio.Event()
    _install_signals(stop)
    point_discord_at(config.discord.api_base_url)
    await _check_token(config, token)
    state_dir = _open_state_dir(config)
    url = config.database.url
    log.info("database: %s", safe_url(url))
    marker = DatabaseMarker.of(config.path, state_dir) if config.path is not None else None
    earlier = marker.earlier if marker is not None else None
    if marker is not None and earlier is not None and earlier.exists() and not marker.path.exists():
        log.warning(
            "%s was written by an earlier version, which kept the bot's state beside the config "
            "file; the state folder is now %s (move the database and the image store there)",
            earlier,
            state_dir,
        )
    try:
        if marker is not None and (await inspect_database(url)).empty:
            marker.refuse_empty(url)  # never make a fresh database where one was lost
        await upgrade_to_head(url)
        if marker is not None and marker.check(url, await inspect_database(url)):
            log.info("this configuration now uses database %s (%s)", safe_url(url), marker.path)
    except (DatabaseMismatch, MarkerUnwritable) as exc:
        raise StartupError(str(exc)) from None
    except SchemaTooNew as exc:
        raise StartupError(f"{exc} ({safe_url(url)})") from None
    except Exception as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines() or [repr(exc)]
        raise StartupError(
            f"cannot open the database {safe_url(url)}: {reason[0]}. Check [database] url"
        ) from None
    policy = QuotaPolicy(
        daily_images=config.quota.daily_images,
        max_queued_per_user=config.quota.max_queued_per_user,
    )
    async with open_ledger(url, policy, migrate=False) as ledger:
        shards = config.discord.shards
        lease = LeaseKeeper(ledger, shards=shards)
        if not shards.everything:
            log.info("this process runs %s", shards.describe())
        try:
            await lease.acquire()  # before anything touches jobs: one process per database
        except LeaseHeld as exc:
            raise StartupError(str(exc)) from None
        try:
            return await _serve_with(config, token, ledger, lease, stop)
        finally:
            await lease.release()


async def _serve_with(
    config: BotConfig, token: str, ledger: Ledger, lease: LeaseKeeper, stop: asyncio.Event
) -> int:
    """`serve` once the database is open and this process owns it."""
    engine: EngineClient = (
        RayEngine(config.engine, config.ray)
        if config.engine.backend == "ray"
        else Engine(config.engine)
    )
    bot, services, jobs = _assemble(config, ledger, engine)
    connection: asyncio.Task[None] | None = None
    watchdog: asyncio.Task[None] | None = None
    updater = MetricsUpdater(services.metrics, engine)

    async def database_ok() -> bool:  # a write (the lease heartbeat) and a read
        return lease.healthy() and await ledger.ping()

    checks = HealthChecks(
        gateway=bot.ready,
        engine=lambda: engine.alive,
        database=database_ok,
        backend=engine.backend,
    )
    ops = OpsServer(services.metrics, checks, refresh=updater.refresh)
    if config.ops.listen:
        try:
            await ops.start(config.ops.listen)
        except OSError as exc:
            raise StartupError(
                f"cannot listen on [ops] listen = {config.ops.listen!r}: {exc.strerror}"
            ) from None
    updating = asyncio.create_task(updater.run(), name="metrics")
    pruning = asyncio.create_task(_prune_images(services.images), name="prune-images")
    heartbeat = asyncio.create_task(lease.run(on_lost=stop.set), name="lease")
    try:
        async with bot:
            try:
                await _until(stop, _login(bot, config, token))  # checks the token only
                # The model before the commands: a model that cannot load must never show
                # Discord users commands that cannot work.
                specs = config.engine.model_specs
                log.info(
                    "loading model %s%s",
                    config.engine.default_model_name,
                    f" (and checking {len(specs) - 1} more)" if len(specs) > 1 else "",
                )
                await _until(stop, engine.start())
                await _until(stop, bot.sync_commands())
                await recover(jobs)
                frozen = settle_heap()
                log.info("start-up objects kept out of garbage collection: %d", frozen)
                connection = asyncio.create_task(bot.connect(reconnect=True), name="gateway")
                watchdog = asyncio.create_task(
                    bot.watch_ready(config.discord.ready_timeout), name="ready-watchdog"
                )
                await _until(stop, asyncio.shield(connection))
                connection.result()  # the gateway gave up on its own: raise why
            finally:
                if watchdog is not None:
                    watchdog.cancel()
                await jobs.shutdown()  # needs Discord for its last edits
                await bot.close()
                if connection is not None:
                    with contextlib.suppress(BaseException):
                        await connection
    except _Stopped:
        log.info("stop signal received: shutting down")
    finally:
        updating.cancel()
        pruning.cancel()
        heartbeat.cancel()
        await ops.stop()
        await engine.close()
    log.info("stopped")
    return 0
