"""Keeping time with Discord: its limits and deadlines, its clock, and the bot's pacing.

- `limits.py`: Discord's timing rules and limits, defined once;
- `clock.py`: `DiscordClock`, Discord's idea of "now" for its deadlines;
- `throttle.py`: the pacing of the bot's message edits and of each user's commands.
"""

__all__: list[str] = []
