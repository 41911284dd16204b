"""Development-only support for end-to-end tests and benchmarks. Not shipped: the wheel
packages `bot`, `engine` and `migrations` only.

- `testkit.discord_server`: a Discord-compatible server (REST + gateway) the real bot talks to;
- `testkit.config`: the bot's TOML config for that server, the tiny model and a SQLite file;
- `testkit.process`: `imagine-bot run` as a child process (`BotProcess`, `run_once`);
- `testkit.jobs`: a job's outcome read back (its id, its result message, its ledger row);
- `testkit.world`: one builder for the whole world (server, guild, channels, members, config,
  bot) that `tests/` and `bench/` share.

Tests run from the repository root (`python -m pytest`) and benchmarks as `python -m bench.x`:
both have the root on `sys.path`, so `import testkit` needs no install. Import the modules
themselves; this file imports nothing, so the server needs neither `bot` nor `engine`.
"""

__all__: list[str] = []
