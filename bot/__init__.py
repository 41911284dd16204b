"""imagine-bot: the Discord front end. Depends on `engine`; the engine never imports it.

Start at the composition root: `app.py` (start-up, wiring, shutdown), `cli.py` (the command
line) and `__main__.py`. The rest is in packages by what they serve, each importing only
those below it (`tests/test_architecture.py` keeps it so):

- `surface/`: where Discord calls in: the client, the command tree, checks, button presses
  and the cogs;
- `jobs/`: a job from admission to delivery, the buttons' actions, recovery after a restart;
- `presentation/`: what users see: texts, embeds, the job buttons and their views;
- `services/`: what the parts share, and the protocols between the surface and the jobs;
- `images/`, `moderation/`, `ops/`: pictures in and out; server rules; metrics, health and
  `doctor`;
- `config.py`, `errors.py`: the TOML config; the bot's exceptions and their user messages;
- `timing/`, `ledger/`: Discord's limits, clock and pacing; the database.
"""

__all__: list[str] = []
