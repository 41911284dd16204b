"""Discord's timing rules the bot must keep, defined once (no discord import: the ledger and
the test kit read them too).

Discord drops an interaction that is not answered within `ANSWER_DEADLINE`, and its token
(follow-ups, edits of the progress message) dies `TOKEN_LIFETIME` after the interaction was
created, on Discord's clock (see `clock.py`).
"""

from __future__ import annotations

from datetime import timedelta

__all__ = [
    "ANSWER_DEADLINE",
    "DISCORD_API",
    "EDITS_PER_WINDOW",
    "EDIT_WINDOW_SECONDS",
    "MAX_OPTION_LENGTH",
    "TOKEN_LIFETIME",
    "TOKEN_MARGIN",
    "TOKEN_USABLE_FOR",
]

#: Discord's own REST API; `[discord] api_base_url` defaults to it.
DISCORD_API = "https://discord.com/api/v10"
#: Seconds Discord waits for the first answer (a reply or a defer) to an interaction.
ANSWER_DEADLINE = 3.0
#: How long Discord accepts an interaction token for follow-ups and edits.
TOKEN_LIFETIME = timedelta(minutes=15)
#: Stop using a token this long before it dies: a delivery in flight must still land.
TOKEN_MARGIN = timedelta(minutes=1)
#: How long after its interaction a token is still worth using.
TOKEN_USABLE_FOR = TOKEN_LIFETIME - TOKEN_MARGIN
#: Message edits the bot allows itself per channel and window (Discord allows about 5 per 5 s).
EDITS_PER_WINDOW = 4
EDIT_WINDOW_SECONDS = 5.0
#: The longest string option Discord lets a slash command declare.
MAX_OPTION_LENGTH = 6000
