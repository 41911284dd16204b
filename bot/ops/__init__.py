"""Operations: what an operator runs and watches besides the bot itself.

- `metrics.py`: every metric the bot exports, kept current;
- `health.py`: the optional `/healthz` and `/metrics` endpoint;
- `discord_http.py`: where discord.py's HTTP goes, and its errors and answer times metered;
- `doctor.py`: `imagine-bot doctor`, a set-up checked before it runs.
"""

__all__: list[str] = []
