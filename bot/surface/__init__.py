"""The Discord surface: where Discord calls into the bot, and nothing else.

- `client.py`: `ImagineBot`, the discord.py client (intents, `setup_hook`, command sync);
- `tree.py`: `ImagineTree`, the one place that turns an error into an answer to the user;
- `checks.py`: the rules declared to Discord, checked again on every use;
- `cogs/`: the slash commands, thin adapters over the job service and the ledger.

The surface reaches the job service only through the `services` protocols (`JobActions`),
and shows what it answers through `presentation`; it never imports `jobs`.
"""

__all__: list[str] = []
