"""The Discord surface: where Discord calls into the bot.

- `client.py`: `ImagineBot`, the discord.py client (intents, `setup_hook`, command sync);
- `tree.py`: `ImagineTree`, the one place that turns an error into an answer to the user;
- `checks.py`: the rules declared to Discord, checked again on every use;
- `presses.py`: a job button's press (or its modal's submit), rate-limited and handed to the
  job actions;
- `cogs/`: the slash commands, thin adapters over the job actions and the ledger.

The surface reaches the jobs only through the `services` protocols (`JobActions`) and shows
what it answers through `presentation`: it never imports `jobs`, nor `jobs` it.
"""

__all__: list[str] = []
