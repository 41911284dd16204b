"""Server rules: where `/imagine` works, what it refuses and adds, what happens to flagged
images, each guild's own `/settings` on top of the config, and who moderates.

- `rules.py`: `Moderation`, the `[moderation]` rules applied to one request or result (pure);
- `guilds.py`: `GuildRules`, the config's rules with each guild's settings, cached;
- `moderators.py`: `is_moderator`, asked by moderator commands and by the job buttons.
"""

__all__: list[str] = []
