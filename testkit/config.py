"""The bot's TOML config file, written the way an operator writes one."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .discord_server import DiscordTestServer

#: `{"section": {"key": value}}`, one TOML table per section.
Sections = dict[str, dict[str, Any]]


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table: `[models]` + `a = {...}` is `[models.a]`
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def write_config(path: Path, sections: Sections) -> Path:
    lines: list[str] = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in values.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def database_url(tmp: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp / 'imagine.db'}"


def bot_config(
    tmp: Path,
    server: DiscordTestServer,
    model_cache: Path,
    *,
    guild_ids: Iterable[int],
    **sections: dict[str, Any],
) -> Path:
    """A config for the test server, the tiny model and a SQLite file in `tmp` (the state
    folder too); each of `sections` is merged key by key over the defaults."""
    base: Sections = {
        "discord": {"api_base_url": server.api_base_url, "guild_ids": list(guild_ids)},
        "paths": {"state_dir": str(tmp)},
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


__all__ = ["Sections", "bot_config", "database_url", "toml_value", "write_config"]
