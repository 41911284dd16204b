"""Operations: what an operator runs and watches besides the bot itself.

- `metrics.py`: the Prometheus metrics, the `/healthz` and `/metrics` endpoint, HTTP
  metering and where discord.py's HTTP goes;
- `doctor.py`: `imagine-bot doctor`, a set-up checked before it runs.
"""

__all__: list[str] = []
