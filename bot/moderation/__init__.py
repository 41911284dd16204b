"""Server rules: where `/imagine` works, what it refuses and adds, what happens to flagged
images, and each guild's own `/settings` on top of the config.

- `rules.py`: `Moderation`, the `[moderation]` rules applied to one request or result (pure);
- `guilds.py`: `GuildRules`, the config's rules with each guild's settings, cached.
"""

__all__: list[str] = []
