"""Where the bot writes: the state folder (`[paths] state_dir`, `$IMAGINE_BOT_STATE_DIR`, or
the default), and a relative SQLite file placed in it. Never beside a read-only config."""

from __future__ import annotations

import os
import typing
from pathlib import Path

__all__ = ["STATE_DIR_ENV", "default_state_dir", "sqlite_file", "sqlite_in"]

#: The environment variable naming the state folder when `[paths] state_dir` is empty (the
#: Docker image sets it to its `/data` volume, the systemd unit to `/var/lib/imagine-bot`).
STATE_DIR_ENV = "IMAGINE_BOT_STATE_DIR"


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL (relative as written), or None (another database, memory)."""
    prefix, sep, file = url.partition(":///")
    if not sep or not prefix.startswith("sqlite") or not file or file.startswith(":"):
        return None
    return Path(file)


def sqlite_in(folder: Path, url: str) -> str:
    """A relative SQLite file (`sqlite+aiosqlite:///imagine-bot.db`) made absolute in `folder`
    (the state folder), not in whatever folder the bot happens to be started from."""
    file = sqlite_file(url)
    if file is None or file.is_absolute():
        return url
    return f"{url.partition(':///')[0]}:///{(folder / file).resolve()}"


def default_state_dir(
    config_path: Path | None,
    beside_config: typing.Iterable[Path] = (),
    environ: typing.Mapping[str, str] | None = None,
) -> tuple[Path, str]:
    """The state folder when `[paths] state_dir` is empty, and how it was chosen:
    `$IMAGINE_BOT_STATE_DIR`; else the config file's folder when it already holds the state of
    an earlier version (`beside_config`: its database identity file, a relative SQLite file,
    the image store), so an existing install keeps its database; else
    `$XDG_STATE_HOME/imagine-bot` (`~/.local/state/imagine-bot`)."""
    env = os.environ if environ is None else environ
    named = env.get(STATE_DIR_ENV, "").strip()
    if named:
        return Path(named).expanduser().resolve(), f"${STATE_DIR_ENV}"
    if config_path is not None and any(p.exists() for p in beside_config):
        return (
            config_path.parent.resolve(),
            "beside the config file, where an earlier version kept it",
        )
    base = env.get("XDG_STATE_HOME", "").strip() or "~/.local/state"
    return (Path(base).expanduser() / "imagine-bot").resolve(), "the default"
