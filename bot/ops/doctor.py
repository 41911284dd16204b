"""`imagine-bot doctor --config config.toml`: check a set-up before running it, and say what to fix.

Each check prints one line, `ok` or `FIX`, and the fix in the operator's terms:

- the config file (every key, as `run` reads it);
- the state folder (`[paths] state_dir`): writable, or creatable, by this user;
- the token: a REST login, without connecting the gateway (the bot does not show online);
- the database: reachable, writable, its schema at this version's head or behind (migrations
  run at start-up) but not newer, and the one this configuration used before;
- each model: a builtin, a local diffusers folder, a single file, or a hub id already in the
  cache or downloadable, and whether it fits the GPU found (its weights at 16 bits, int8/fp8
  and nf4, estimated from the files' headers; as configured with `quantize` and `offload`,
  against `[engine] max_memory_gb` or the GPU's memory; with no GPU it says so);
- the describe model and the tagger (`[describe]`), when set: their weights at 16 bits,
  counted against the same memory (they load when first asked, beside the image models);
- each `[discord] guild_ids` server: the bot is in it, and in every allowed channel it may
  View Channel, Send Messages, Attach Files and Embed Links (roles and channel overwrites
  computed as Discord does).

Nothing is written: no state folder, no migration, no database identity file, no model
download.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import discord

from engine import EngineConfig, EngineError, ModelSpec
from engine.sources import (
    CHECKPOINT_SUFFIXES,
    first_line,
    hub_problem,
    hub_unreachable,
    looks_local,
    not_a_source,
    unreachable_message,
)

from ..config import BotConfig, ConfigError, load_config
from ..ledger import DatabaseMarker, SchemaTooNew, inspect_database, safe_url, schema_status
from ..state_dir import STATE_DIR_ENV, sqlite_file

__all__ = ["CHANNEL_PERMISSIONS", "Check", "channel_permissions", "run_doctor"]

VIEW_CHANNEL = 1 << 10
SEND_MESSAGES = 1 << 11
EMBED_LINKS = 1 << 14
ATTACH_FILES = 1 << 15
ADMINISTRATOR = 1 << 3
ALL = (1 << 53) - 1
#: What the bot needs in each channel where images are made, with Discord's names.
CHANNEL_PERMISSIONS = {
    VIEW_CHANNEL: "View Channel",
    SEND_MESSAGES: "Send Messages",
    ATTACH_FILES: "Attach Files",
    EMBED_LINKS: "Embed Links",
}
GUILD_TEXT, GUILD_ANNOUNCEMENT = 0, 5


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok ' if self.ok else 'FIX'}  {self.name}: {self.detail}"


def channel_permissions(
    base_roles: Iterable[Mapping[str, Any]],
    member_role_ids: Iterable[int],
    member_id: int,
    guild_id: int,
    overwrites: Iterable[Mapping[str, Any]],
) -> int:
    """A member's permission bits in a channel, computed as Discord documents it: @everyone
    and the member's roles, Administrator, then the channel's @everyone, role and member
    overwrites in that order."""
    roles = {int(r["id"]): int(r["permissions"]) for r in base_roles}
    mine = {int(r) for r in member_role_ids}
    bits = roles.get(guild_id, 0)
    for role_id in mine:
        bits |= roles.get(role_id, 0)
    if bits & ADMINISTRATOR:
        return ALL
    by_id = {int(o["id"]): o for o in overwrites}
    everyone = by_id.get(guild_id)
    if everyone is not None:
        bits = (bits & ~int(everyone["deny"])) | int(everyone["allow"])
    allow = deny = 0
    for role_id in mine:
        o = by_id.get(role_id)
        if o is not None and int(o.get("type", 0)) == 0:
            allow |= int(o["allow"])
            deny |= int(o["deny"])
    bits = (bits & ~deny) | allow
    member = by_id.get(member_id)
    if member is not None and int(member.get("type", 1)) == 1:
        bits = (bits & ~int(member["deny"])) | int(member["allow"])
    return bits


async def run_doctor(config_path: str | Path, out: TextIO = sys.stdout) -> int:
    """Run every check and print the checklist; 0 when all pass, 1 otherwise."""
    checks: list[Check] = []

    def report(check: Check) -> None:
        checks.append(check)
        print(check.line(), file=out, flush=True)

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        report(Check("config", False, str(exc)))
        return 1
    report(Check("config", True, str(config_path)))
    report(_state(config))
    await _database(config, report)
    for spec in config.engine.model_specs:
        report(_model(config.engine, spec))
    for check in _readers(config.engine):
        report(check)
    if config.engine.backend == "ray":
        report(await _ray(config))
    await _discord(config, report)
    failed = [c for c in checks if not c.ok]
    summary = "everything is ready" if not failed else f"{len(failed)} thing(s) to fix"
    print(f"\n{summary}", file=out)
    return 0 if not failed else 1


# -- the state folder and the database --------------------------------------------------------


def _state(config: BotConfig) -> Check:
    """The state folder is writable, or its nearest existing parent is (it is made at start)."""
    folder = config.paths.state_dir
    if folder is None:
        return Check("state", True, "no state folder (no config file)")
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    fix = f"set [paths] state_dir (or ${STATE_DIR_ENV}) to a folder this user can write"
    if not existing.is_dir():
        return Check("state", False, f"{folder}: {existing} is not a folder; {fix}")
    if not os.access(existing, os.W_OK | os.X_OK):
        return Check("state", False, f"{folder}: {existing} is not writable by this user; {fix}")
    made = "" if existing == folder else " (made at the first start)"
    return Check("state", True, f"{folder}{made}, {config.state_from}")


async def _database(config: BotConfig, report: Callable[[Check], None]) -> None:
    url = config.database.url
    shown = safe_url(url)
    sqlite = sqlite_file(url)
    state_dir = config.paths.state_dir
    made_at_start = state_dir is not None and not state_dir.exists()  # the state folder
    if sqlite is not None and not (made_at_start and sqlite.parent == state_dir):
        folder = sqlite.parent
        if not folder.is_dir():
            report(Check("database", False, f"{shown}: the folder {folder} does not exist"))
            return
        target = sqlite if sqlite.exists() else folder
        if not os.access(target, os.W_OK):
            report(Check("database", False, f"{shown}: {target} is not writable by this user"))
            return
    try:
        state = await inspect_database(url)
        status = "new" if state.empty else await schema_status(url)
    except SchemaTooNew as exc:
        report(Check("database", False, f"{shown}: {exc}"))
        return
    except Exception as exc:  # unreachable server, bad credentials, not a database
        report(Check("database", False, f"{shown}: cannot open it ({first_line(exc)})"))
        return
    if config.path is not None and state_dir is not None:
        marker = DatabaseMarker.of(config.path, state_dir)
        problem = marker.problem(url, state)
        if problem is not None:
            report(Check("database", False, problem))
            return
    detail = {
        "new": "new: its tables are made at the first start",
        "behind": "reachable; its schema is upgraded at the next start",
        "current": "reachable, writable, schema up to date",
    }[status]
    report(Check("database", True, f"{shown}: {detail}"))


# -- models ------------------------------------------------------------------------------------


def _model(engine: EngineConfig, spec: ModelSpec) -> Check:
    name = f"model {spec.name}"
    source = spec.source
    if source.startswith("builtin:"):
        return Check(name, True, f"{source} (built offline, random weights)")
    local = Path(source).expanduser()
    if local.is_file():  # a single checkpoint: the loader reads it (and names what is wrong)
        if local.suffix.lower() not in CHECKPOINT_SUFFIXES:
            return Check(name, False, f"{local} is not a .safetensors or .ckpt checkpoint")
        return _fits(name, f"checkpoint file {local}", engine, spec, local.stat().st_size)
    if local.exists():
        if not (local / "model_index.json").is_file():
            return Check(name, False, f"{local} has no model_index.json: not a diffusers model")
        return _fits(name, f"local folder {local}", engine, spec, _weights_bytes(local))
    if looks_local(source):
        return Check(name, False, f"the folder {source} does not exist")
    problem = not_a_source(source)
    if problem is not None:
        return Check(name, False, problem)
    cache = str(engine.cache_dir / "hub") if engine.cache_dir is not None else None
    try:
        from huggingface_hub import scan_cache_dir, try_to_load_from_cache

        cached = try_to_load_from_cache(source, "model_index.json", cache_dir=cache)
        if isinstance(cached, str):
            size = next(
                (r.size_on_disk for r in scan_cache_dir(cache).repos if r.repo_id == source), 0
            )
            return _fits(name, f"{source} is in the download cache", engine, spec, size)
        why = hub_unreachable()
        if why is not None:
            return Check(name, False, unreachable_message(source, why))
        from huggingface_hub import model_info

        info = model_info(source, files_metadata=True, timeout=15)
    except Exception as exc:
        why = hub_problem(source, exc) or f"cannot check {source} on the hub ({first_line(exc)})"
        return Check(name, False, why)
    size = sum(s.size or 0 for s in info.siblings or () if s.rfilename.endswith(".safetensors"))
    where = f"{source} can be downloaded (once, at the first start)"
    return _fits(name, where, engine, spec, size)


def _readers(engine: EngineConfig) -> list[Check]:
    """A line for each of `[describe]`'s models that is set: its weights at 16 bits from its
    files' headers against the memory the models may use (it must fit there alone; beside
    the image models it yields to them), or that it is not on this disk yet."""
    from engine.budget import READERS, reader_estimates
    from engine.memory import gib

    sizes = reader_estimates(engine, "float16")
    limit, limit_name = _memory_limit(engine)
    checks = []
    for key, what in READERS.items():
        source = getattr(engine.describe, key)
        if not source:
            continue
        size = sizes.get(key)
        if size is None:
            detail = f"{source}: not on this disk yet (fetched when first asked)"
            checks.append(Check(what, True, detail))
        elif limit is None:
            checks.append(Check(what, True, f"{source}; weights {gib(size)} at 16 bits"))
        else:
            fits = "fits" if size <= limit else "does not fit"
            fix = "" if size <= limit else f": pick a smaller one, or leave [describe] {key} empty"
            detail = f"{source}; weights {gib(size)} at 16 bits {fits} {limit_name}{fix}"
            checks.append(Check(what, size <= limit, detail))
    return checks


async def _ray(config: BotConfig) -> Check:
    """`backend = "ray"`: Ray Serve installed, and the cluster's address answering."""
    import importlib.util

    from engine.cluster.serve_client import NEEDS_RAY, reachable_or_raise

    if importlib.util.find_spec("ray") is None:
        return Check("ray", False, NEEDS_RAY)
    address = config.ray.address
    try:
        await asyncio.to_thread(reachable_or_raise, address)
    except EngineError as exc:
        return Check("ray", False, str(exc))
    where = {
        "local": "a private Ray cluster starts inside the bot",
        "auto": "joins this machine's Ray cluster (run `ray start` here first)",
    }.get(address, f"the Ray cluster at {address} answers")
    wanted = config.ray.num_gpus
    gpus = (
        f"{wanted:g} GPU(s) per replica"
        if wanted is not None
        else f"GPUs per replica as [engine] device = {config.engine.device!r} needs"
    )
    return Check("ray", True, f"{where}; {config.ray.most_replicas} replica(s), {gpus}")


def _weights_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*.safetensors"))


def _fits(name: str, where: str, engine: EngineConfig, spec: ModelSpec, download: int) -> Check:
    """Whether the model fits the memory it may use: `[engine] max_memory_gb`, else the GPU
    found (else this machine's available memory), by its weights estimated from its files'
    headers (or, for a model not downloaded yet, its download size)."""
    from engine.budget import weights_estimate
    from engine.memory import gib

    weights = weights_estimate(spec, engine)
    gpu, _ = _gpu_memory()
    limit, limit_name = _memory_limit(engine)
    if weights is None:  # not downloaded yet: its files' size is all there is to go by
        if download <= 0:
            return Check(name, True, where)
        sizes, needed, partial = f"{gib(download)} of files", download, ""
    else:
        sizes = (
            f"weights {gib(weights.bytes('float16'))} at 16 bits, "
            f"{gib(weights.bytes('float16', 'int8'))} int8/fp8, "
            f"{gib(weights.bytes('float16', 'nf4'))} nf4"
        )
        needed = weights.bytes("float16", spec.quantize, spec.offload)
        partial = "" if weights.complete else " (its reference repository is not here yet)"
    configured = [
        f"{key} = {getattr(spec, key)!r}"
        for key in ("quantize", "offload")
        if getattr(spec, key) != "none"
    ]
    how = f" with {', '.join(configured)}" if configured else ""
    needs_gpu = [part for part in configured if part != "quantize = 'int8'"]
    if gpu is None and needs_gpu:
        return Check(
            name,
            False,
            f"{where}; {sizes}{partial}; no GPU found, and {' and '.join(needs_gpu)} needs an "
            'NVIDIA GPU: use quantize = "int8" or "none", offload = "none"',
        )
    if limit is None:
        free = _available_memory()
        detail = f"{where}; {sizes}{partial}; no GPU found: it runs on the CPU"
        if free is not None and needed > free:
            return Check(name, False, f"{detail}, and needs more than the {gib(free)} free")
        return Check(name, True, detail)
    if needed > limit:
        options = [
            f'quantize = "{mode}"'
            for mode in ("int8", "fp8", "nf4")
            if weights is not None and weights.bytes("float16", mode, spec.offload) <= limit
        ]
        fix = f": set {' or '.join(options)}" if options else ": use a smaller model"
        return Check(
            name,
            False,
            f"{where}; {sizes}{partial}; {gib(needed)}{how} does not fit {limit_name}{fix}",
        )
    return Check(name, True, f"{where}; {sizes}{partial}; {gib(needed)}{how} fits {limit_name}")


def _memory_limit(engine: EngineConfig) -> tuple[int | None, str]:
    """The memory the models may use, and its name: `[engine] max_memory_gb`, else the GPU
    found; (None, "") on a machine without a GPU and without a bound."""
    from engine.memory import gib

    if engine.max_memory_gb > 0:
        gb = engine.max_memory_gb
        return int(gb * 2**30), f"[engine] max_memory_gb ({gb:g} GiB)"
    gpu, device = _gpu_memory()
    return gpu, (f"the {gib(gpu)} of {device}" if gpu is not None else "")


def _gpu_memory() -> tuple[int | None, str]:
    """The GPU's total memory and name, or (None, "") without one."""
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            return int(props.total_memory), props.name
    except Exception:
        pass
    return None, ""


def _available_memory() -> int | None:
    """This machine's available memory (None: unknown)."""
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


# -- Discord -------------------------------------------------------------------------------------


async def _discord(config: BotConfig, report: Callable[[Check], None]) -> None:
    from .discord_http import point_discord_at

    token = config.resolve_token()
    if not token:
        env = config.discord.token_env
        report(Check("token", False, f"no token: set the {env} environment variable"))
        return
    problem = config.token_problem(token)
    if problem is not None:
        report(Check("token", False, problem))
        return
    point_discord_at(config.discord.api_base_url)
    http = discord.http.HTTPClient(None)  # REST only: the gateway is never connected
    try:
        try:
            me = await http.static_login(token)
        except discord.LoginFailure:
            report(Check("token", False, config.token_rejected()))
            return
        except (discord.HTTPException, OSError) as exc:
            where = config.discord.api_base_url
            report(
                Check(
                    "token",
                    False,
                    f"cannot reach Discord at {where} ({first_line(exc)}): check the network "
                    "or proxy, and [discord] api_base_url",
                )
            )
            return
        report(Check("token", True, f"logs in as {me['username']} (id {me['id']})"))
        if not config.discord.guild_ids:
            report(
                Check(
                    "servers",
                    True,
                    "commands are global; list [discord] guild_ids to check each server",
                )
            )
            return
        for guild_id in config.discord.guild_ids:
            await _guild(http, config, int(me["id"]), guild_id, report)
    finally:
        await http.close()


async def _guild(
    http: discord.http.HTTPClient,
    config: BotConfig,
    bot_id: int,
    guild_id: int,
    report: Callable[[Check], None],
) -> None:
    name = f"server {guild_id}"
    try:
        guild = await http.get_guild(guild_id, with_counts=False)
        member = await http.get_member(guild_id, bot_id)
        roles = await http.get_roles(guild_id)
        channels = await http.get_all_guild_channels(guild_id)
    except (discord.NotFound, discord.Forbidden):
        report(
            Check(
                name,
                False,
                "the bot is not in this server: invite it with the OAuth2 URL Generator "
                "(scopes bot and applications.commands), or fix [discord] guild_ids "
                "(Discord's Developer Mode, then right-click the server, Copy Server ID)",
            )
        )
        return
    report(Check(name, True, f"the bot is in {guild['name']!r}"))
    allowed = set(config.moderation.allowed_channel_ids)
    texts = [c for c in channels if int(c.get("type", -1)) in (GUILD_TEXT, GUILD_ANNOUNCEMENT)]
    chosen = [c for c in texts if not allowed or int(c["id"]) in allowed]
    missing_ids = allowed - {int(c["id"]) for c in texts}
    for channel_id in sorted(missing_ids):
        report(Check(f"channel {channel_id}", False, "allowed in the config, not in this server"))
    for channel in chosen:
        bits = channel_permissions(
            roles,
            [int(r) for r in member.get("roles", [])],
            bot_id,
            guild_id,
            channel.get("permission_overwrites", []),
        )
        lacking = [label for bit, label in CHANNEL_PERMISSIONS.items() if not bits & bit]
        where = f"#{channel['name']}"
        if lacking:
            report(
                Check(
                    where,
                    False,
                    f"the bot lacks {', '.join(lacking)}: allow them for its role in the "
                    "channel's settings (Permissions)",
                )
            )
        else:
            report(Check(where, True, "the bot may post images here"))
