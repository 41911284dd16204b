"""The bot's TOML config, read once at start-up into typed, validated, frozen sections.

Every key has a default, so a file holding only a few keys runs. Errors name the key and what
to write instead; unknown keys are errors too (a typo should not silently do nothing).
"""

from __future__ import annotations

import difflib
import os
import tomllib
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from engine import EngineConfig, LoraSpec, ModelSpec
from engine.cluster import RayConfig
from engine.config import DescribeConfig

from .canvas_settings import FixSettings, RegionSettings, UpscaleSettings, canvas_models
from .ledger.identity import marker_name
from .ledger.shards import Shards
from .state_dir import default_state_dir, sqlite_file, sqlite_in
from .timing.limits import DISCORD_API

__all__ = [
    "BotConfig",
    "ConfigError",
    "DatabaseSettings",
    "DiscordSettings",
    "ImagesSettings",
    "ModerationSettings",
    "OpsSettings",
    "PathsSettings",
    "QuotaSettings",
    "load_config",
    "parse_config",
]

#: How to get a good token, said the same way by `run` and `doctor`.
TOKEN_FIX = "copy the token again from the developer portal (your application → Bot → Reset Token)"


class ConfigError(Exception):
    """The config cannot be used; `problems` lists every reason, one line each."""

    def __init__(self, problems: list[str], source: str = "config") -> None:
        self.problems = problems
        self.source = source
        super().__init__(f"{source}: " + "; ".join(problems))


@dataclass(frozen=True, slots=True)
class DiscordSettings:
    token_env: str = "DISCORD_TOKEN"  # environment variable holding the bot token
    token: str = ""  # discouraged: a token written in the file (see docs/setup.md)
    api_base_url: str = DISCORD_API
    guild_ids: tuple[int, ...] = ()  # sync commands to these guilds at start-up (instant)
    moderator_role_ids: tuple[int, ...] = ()  # besides members with Manage Server
    ready_timeout: float = 60.0  # seconds to wait for the gateway's READY before reconnecting
    shard_count: int = 0  # 0: one process runs every guild; N: Discord's shards, split below
    shard_ids: tuple[int, ...] = ()  # the shards this process runs; empty: all of them

    @property
    def shards(self) -> Shards:
        """The guilds this process owns (`Shards()`: every guild)."""
        return Shards.of(self.shard_count, self.shard_ids)


@dataclass(frozen=True, slots=True)
class PathsSettings:
    """Where the bot writes. It never writes beside its config file, which may be read-only
    (a Compose bind mount, systemd's `ProtectSystem=strict`): the database's identity file, a
    relative SQLite file and a relative `[images] store_dir` all go in `state_dir`."""

    state_dir: Path | None = None  # None: `_default_state_dir` (made absolute when read)


@dataclass(frozen=True, slots=True)
class DatabaseSettings:
    url: str = "sqlite+aiosqlite:///imagine-bot.db"  # a relative file is in the state folder


@dataclass(frozen=True, slots=True)
class QuotaSettings:
    daily_images: int = 25  # images per user per rolling 24 hours, per guild
    max_queued_per_user: int = 2  # jobs one user may have queued or running at once
    max_permutations: int = 4  # jobs one /imagine's {a, b} choices may make (all or none)


@dataclass(frozen=True, slots=True)
class ModerationSettings:
    allowed_channel_ids: tuple[int, ...] = ()  # empty: every channel
    blocked_words: tuple[str, ...] = ()
    forced_negative_prompt: str = ""
    flagged_images: Literal["spoiler", "refuse_outside_nsfw"] = "spoiler"
    commands_per_minute: int = 12  # per user, commands and button presses; 0: no limit


@dataclass(frozen=True, slots=True)
class ImagesSettings:
    """Pictures in and out: attachments users start from, and what Upscale and Vary need."""

    store_dir: Path = Path("imagine-bot-images")  # in the state folder unless absolute
    keep_days: int = 30  # then Upscale/Vary on older results says the image is gone
    max_picture_mb: float = 10.0  # largest attachment /imagine downloads
    upscale_cost: int = 2  # images of the allowance an upscale costs (4x the pixels)
    subtle_variation: float = 0.35  # image-to-image strength of "Vary (subtle)"
    strong_variation: float = 0.7  # of "Vary (strong)" and of V1-V4 on a grid

    def __post_init__(self) -> None:
        problems = []
        if self.keep_days < 1:
            problems.append(f"keep_days must be 1 or more, not {self.keep_days}")
        if not 0 < self.max_picture_mb <= 100:
            problems.append(
                f"max_picture_mb must be above 0 and at most 100, not {self.max_picture_mb:g}"
            )
        if self.upscale_cost < 0:
            problems.append(f"upscale_cost must be 0 or more, not {self.upscale_cost}")
        for name in ("subtle_variation", "strong_variation"):
            value = getattr(self, name)
            if not 0.05 <= value <= 1.0:
                problems.append(f"{name} must be between 0.05 and 1, not {value:g}")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass(frozen=True, slots=True)
class OpsSettings:
    listen: str = ""  # e.g. "127.0.0.1:9108" for /healthz and /metrics; empty: off


@dataclass(frozen=True, slots=True)
class BotConfig:
    discord: DiscordSettings = field(default_factory=DiscordSettings)
    paths: PathsSettings = field(default_factory=PathsSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    engine: EngineConfig = field(default_factory=EngineConfig)  # `[engine]` is EngineConfig
    quota: QuotaSettings = field(default_factory=QuotaSettings)
    moderation: ModerationSettings = field(default_factory=ModerationSettings)
    images: ImagesSettings = field(default_factory=ImagesSettings)
    ops: OpsSettings = field(default_factory=OpsSettings)
    ray: RayConfig = field(default_factory=RayConfig)  # `[ray]`: used with backend = "ray"
    path: Path | None = None  # where it was read from, for messages
    state_from: str = ""  # how `paths.state_dir` was chosen, for the start-up log line

    def resolve_token(self, environ: typing.Mapping[str, str] | None = None) -> str:
        """The bot token from the environment variable named in the config, else the file."""
        env = os.environ if environ is None else environ
        return env.get(self.discord.token_env, "").strip() or self.discord.token.strip()

    def token_where(self, environ: typing.Mapping[str, str] | None = None) -> str:
        """Where `resolve_token` found the token, in messages: `$DISCORD_TOKEN` or the file."""
        env = os.environ if environ is None else environ
        if env.get(self.discord.token_env, "").strip():
            return f"${self.discord.token_env}"
        return f"[discord] token of {self.path}"

    def token_problem(self, token: str) -> str | None:
        """Why `token` cannot be a bot token before asking Discord (a space, a line break or
        a character no token has: a placeholder, two lines pasted, a cut-off copy), or None."""
        if token.isascii() and token.isprintable() and not any(c.isspace() for c in token):
            return None
        return (
            f"the bot token in {self.token_where()} has a space, line break or other "
            f"character no token has: {TOKEN_FIX}"
        )

    def token_rejected(self) -> str:
        """What to do when Discord answers 401 to the token (`run` and `doctor` alike)."""
        return f"Discord rejected the bot token in {self.token_where()}: {TOKEN_FIX}"


_SECTIONS: dict[str, type] = {
    "discord": DiscordSettings,
    "paths": PathsSettings,
    "database": DatabaseSettings,
    "engine": EngineConfig,  # the engine's own settings, declared once (engine/config.py)
    "quota": QuotaSettings,
    "moderation": ModerationSettings,
    "images": ImagesSettings,
    "ops": OpsSettings,
    "ray": RayConfig,  # the Ray backend's own settings (engine/cluster/config.py)
    "describe": DescribeConfig,  # a part of [engine] (engine/config.py), in a table of its own
    # The canvas's helper models, folded into [engine] (`canvas_settings.canvas_models`)
    "region": RegionSettings,
    "upscale": UpscaleSettings,
    "fix": FixSettings,
}


def _unknown(key: str, known: typing.Iterable[str], where: str) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key {where}{key}{hint}"


def _convert(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ValueError(
                f"{where} must be one of {', '.join(map(repr, allowed))}, not {value!r}"
            )
        return value
    if origin is tuple:
        (item,) = typing.get_args(hint)[:1]
        if not isinstance(value, list):
            raise ValueError(f"{where} must be a list, not {type(value).__name__}")
        return tuple(_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (types.UnionType, typing.Union):
        kinds = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(kinds) != 1:
            raise TypeError(f"unsupported config type at {where}")
        if value == "":  # TOML has no null: an empty string means "not set"
            return None
        return _convert(value, kinds[0], where)
    if hint is Path:
        if not isinstance(value, str) or "\0" in value:
            raise ValueError(f"{where} must be a path (a string), not {value!r}")
        return Path(value).expanduser()
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, not {value!r}")
        return value
    if hint is int:
        if isinstance(value, str) and value.isdigit():  # snowflakes are often quoted
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where} must be a whole number, not {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{where} must be a number, not {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{where} must be a string, not {value!r}")
        return value
    raise TypeError(f"unsupported config type {hint!r} at {where}")


#: Keys that may say "model": the model's usual value (its family's: 1 step and guidance 0 for
#: turbo models, 25 steps for SD...), as leaving them out does. The engine spells it 0 (below
#: 0 for guidance), which is accepted too.
_MODELS_OWN = {
    "engine": {"default_steps", "default_guidance", "default_size"},
    "models": {"steps", "guidance", "size"},
}


def _section(
    cls: type, table: Any, name: str, problems: list[str], extra: dict[str, Any] | None = None
) -> Any:
    if not isinstance(table, dict):
        problems.append(f"[{name}] must be a table, not {type(table).__name__}")
        return cls()
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    models_own = _MODELS_OWN.get(name.partition(".")[0], set())
    values = {}
    for key, value in table.items():
        if key not in known:
            problems.append(_unknown(key, known, f"[{name}] "))
            continue
        if key in models_own and value == "model":
            continue  # the model's usual: the field's default
        try:
            values[key] = _convert(value, hints[key], f"[{name}] {key}")
        except ValueError as exc:
            secret = name == "discord" and key == "token"  # never echo a token, even a bad one
            why = str(exc)
            if key in models_own:
                why = why.replace(" must be a ", ' must be "model" (the model\'s usual) or a ')
            problems.append(f"[{name}] {key} must be a string" if secret else why)
    missing = [
        f.name
        for f in fields(cls)
        if f.name not in values
        and f.default is MISSING
        and f.default_factory is MISSING
        and f.name not in (extra or {})
    ]
    if missing:
        problems += [f"[{name}] {key} is required" for key in missing]
        return None
    try:
        return cls(**values, **(extra or {}))
    except ValueError as exc:  # the section's own checks (EngineConfig validates itself)
        problems += [f"[{name}] {p}" for p in str(exc).split("; ")]
        return cls()


#: Tables of named entries, `[models.<name>]` and `[loras.<name>]`: parts of `[engine]`.
_NAMED: dict[str, type] = {"models": ModelSpec, "loras": LoraSpec}


def _named(kind: str, tables: Any, problems: list[str]) -> tuple[Any, ...]:
    """`[models.<name>]` (or `[loras.<name>]`) tables as specs named by their key."""
    if not isinstance(tables, dict):
        problems.append(f"[{kind}] must hold tables such as [{kind}.<name>]")
        return ()
    cls = _NAMED[kind]
    out = []
    for name, table in tables.items():
        if isinstance(table, dict) and "name" in table:
            problems.append(f"[{kind}.{name}] takes its name from the table; remove name")
            continue
        count = len(problems)
        spec = _section(
            cls,
            {"name": name, **table} if isinstance(table, dict) else table,
            f"{kind}.{name}",
            problems,
        )
        if len(problems) == count and spec is not None:
            out.append(spec)
    return tuple(out)


def _with_state_dir(
    sections: dict[str, Any], path: Path, environ: typing.Mapping[str, str] | None
) -> str:
    """Resolve the state folder into `sections` (and a relative SQLite file and image store
    into it); returns how the folder was chosen."""
    database = sections.get("database") or DatabaseSettings()
    images = sections.get("images") or ImagesSettings()
    configured = (sections.get("paths") or PathsSettings()).state_dir
    if configured is not None:
        state_dir = (path.parent / configured).resolve()  # relative: to the config file
        how = "[paths] state_dir"
    else:
        sqlite = sqlite_file(database.url)
        earlier = [path.with_name(marker_name(path))]  # where earlier versions kept state
        earlier += [
            path.parent / p
            for p in (sqlite, images.store_dir)
            if p is not None and not p.is_absolute()
        ]
        state_dir, how = default_state_dir(path, earlier, environ)
    sections["paths"] = PathsSettings(state_dir=state_dir)
    sections["database"] = replace(database, url=sqlite_in(state_dir, database.url))
    sections["images"] = replace(images, store_dir=state_dir / images.store_dir)
    return how


def _near(path: Path | None, specs: tuple[Any, ...]) -> tuple[Any, ...]:
    """Sources (and a model's `base` folder) given relative to the config file
    (`./loras/ink.safetensors`) made absolute, so the bot finds them whatever folder it is
    started from."""
    if path is None:
        return specs
    out = []
    for spec in specs:
        for key in ("source", "base"):
            value = getattr(spec, key, "")
            local = Path(value).expanduser()
            near = path.parent / local
            if value and not local.is_absolute() and near.exists():
                spec = replace(spec, **{key: str(near.resolve())})
        out.append(spec)
    return tuple(out)


def parse_config(
    data: dict[str, Any],
    path: Path | None = None,
    environ: typing.Mapping[str, str] | None = None,
) -> BotConfig:
    """Build a `BotConfig` from parsed TOML; raises `ConfigError` listing every problem.

    With the file's `path`, relative paths are made absolute: model and LoRA files against the
    file's folder, the state (a SQLite file, `[images] store_dir`) against the state folder."""
    problems: list[str] = []
    sections: dict[str, Any] = {}
    # Named tables first: `[engine]` is checked with them (default_model, a LoRA's models).
    named = {key: _near(path, _named(key, data[key], problems)) for key in _NAMED if key in data}
    if named and "engine" not in data:
        data = {**data, "engine": {}}
    for key, table in data.items():
        if key in _NAMED:
            continue
        if key not in _SECTIONS:
            problems.append(_unknown(key, [*_SECTIONS, *_NAMED], "section "))
            continue
        extra = named if key == "engine" else None
        if key == "engine" and isinstance(table, dict):
            for name in [n for n in (*_NAMED, "describe") if n in table]:
                tables = f"[{name}.<name>] tables" if name in _NAMED else f"a [{name}] table"
                problems.append(f"[engine] {name}: write {tables} instead")
            table = {k: v for k, v in table.items() if k not in (*_NAMED, "describe")}
        sections[key] = _section(_SECTIONS[key], table, key, problems, extra)
    if "describe" in sections:
        engine = sections.get("engine") or EngineConfig()
        sections["engine"] = replace(engine, describe=sections.pop("describe"))
    state_from = _with_state_dir(sections, path, environ) if path is not None else ""
    canvas_models(sections, path)
    config = BotConfig(**sections, path=path, state_from=state_from)
    problems += _check(config)
    if problems:
        raise ConfigError(problems, str(path) if path else "config")
    return config


def _check(config: BotConfig) -> list[str]:
    problems = []
    discord = config.discord
    if discord.shard_count < 0:
        problems.append("[discord] shard_count must be 0 (no sharding) or more")
    if discord.shard_ids and discord.shard_count < 1:
        problems.append("[discord] shard_ids needs shard_count")
    bad = [i for i in discord.shard_ids if not 0 <= i < max(discord.shard_count, 1)]
    if bad:
        problems.append(
            f"[discord] shard_ids must be between 0 and shard_count - 1 "
            f"({max(discord.shard_count, 1) - 1}), not {', '.join(map(str, bad))}"
        )
    if len(set(discord.shard_ids)) != len(discord.shard_ids):
        problems.append("[discord] shard_ids lists a shard twice")
    if not config.discord.ready_timeout > 0:
        problems.append("[discord] ready_timeout must be a number of seconds above 0")
    if not config.discord.api_base_url.startswith(("http://", "https://")):
        problems.append("[discord] api_base_url must start with http:// or https://")
    if "://" not in config.database.url:
        problems.append(
            "[database] url must be an SQLAlchemy URL such as "
            "'sqlite+aiosqlite:///imagine-bot.db' or 'postgresql+asyncpg://user:pw@host/db'"
        )
    if config.quota.daily_images < 0:
        problems.append("[quota] daily_images must be 0 or more")
    if config.quota.max_queued_per_user < 1:
        problems.append("[quota] max_queued_per_user must be at least 1")
    if config.quota.max_permutations < 1:
        problems.append("[quota] max_permutations must be at least 1")
    if config.moderation.commands_per_minute < 0:
        problems.append("[moderation] commands_per_minute must be 0 (no limit) or more")
    if config.ops.listen:
        host, _, port = config.ops.listen.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) < 65536:  # 0: any free port
            problems.append("[ops] listen must look like '127.0.0.1:9108'")
    return problems


def load_config(path: str | Path) -> BotConfig:
    """Read and validate a TOML file; a missing or malformed file is a `ConfigError` too."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            ["file not found: copy config.example.toml to config.toml and edit it"], str(path)
        ) from None
    except OSError as exc:
        raise ConfigError([f"cannot read the file: {exc.strerror}"], str(path)) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(["the file is not UTF-8 text"], str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"not valid TOML: {exc}"], str(path)) from None
    return parse_config(data, path)
