"""The REST half of the test server, one module per group of routes.

- `api`: :class:`RestApi`, which installs every group (and the recorder) on the application;
- `recorder`: the middleware that records each request, answers injected failures and turns
  refusals into Discord's JSON errors;
- `directory`: gateway URL, users, the application, guilds, attachment files;
- `channels`: a channel, its history and the bot's messages in it;
- `responses`: an interaction's initial response (the callback), its followups and ``@original``;
- `commands`: application command sync and edits;
- `base` and `limits`: what the groups share (request keys, look-ups, the edit rate limit).
"""

from .api import RestApi

__all__ = ["RestApi"]
