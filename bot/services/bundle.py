"""What the bot's parts share, as one small bundle, and what they need from Discord.

Cogs, buttons, the command tree, checks and the job service take a `Services` (and the
`JobActions` that `/imagine` and the buttons call) instead of the whole `ImagineBot`, so each
can be built and tested without a logged-in client. Only the composition root (`app.py`)
knows the concrete client; here it is just `Channels`, the few client methods the parts use,
and `ServiceHost`, what handlers that discord.py calls without a cog find on it.
"""

from __future__ import annotations

from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, cast

import discord

from engine import EngineClient

from ..config import BotConfig
from ..images.store import ImageStore
from ..ledger import Ledger
from ..moderation.guilds import GuildRules
from ..ops.metrics import Metrics
from ..timing.clock import DiscordClock
from ..timing.throttle import EditThrottle, UserRateLimit
from .actions import JobActions, Press

__all__ = ["Channels", "ServiceHost", "Services", "host_of"]


class Channels(Protocol):
    """The parts of the Discord client the job service uses to reach channels."""

    def get_channel(self, channel_id: int, /) -> Any: ...

    def get_partial_messageable(
        self, channel_id: int, *, guild_id: int | None = None
    ) -> discord.PartialMessageable: ...

    @property
    def user(self) -> discord.ClientUser | None:
        """The bot's own user (known once logged in)."""
        ...

    def is_ready(self) -> bool: ...

    def wait_until_ready(self) -> Coroutine[Any, Any, None]: ...

    def partial_webhook(self, application_id: int, token: str) -> discord.Webhook:
        """A webhook for an interaction's token, bound to the client's connection state."""
        ...


@dataclass(frozen=True, slots=True)
class Services:
    """The long-lived resources of one bot process, built once by `app.py`."""

    config: BotConfig
    ledger: Ledger
    engine: EngineClient
    rules: GuildRules  # each guild's [moderation] rules, with its own /settings
    rate_limit: UserRateLimit
    clock: DiscordClock
    edit_throttle: EditThrottle
    metrics: Metrics
    channels: Channels
    images: ImageStore


class ServiceHost(Protocol):
    """What `interaction.client` offers to handlers discord.py calls without a cog (buttons,
    checks, the tree): the services, the job actions, and where a job button's press goes."""

    services: Services
    job_actions: JobActions

    async def press(self, interaction: discord.Interaction[Any], press: Press) -> None:
        """Answer a press of a job button (the surface's `presses.py`)."""
        ...


def host_of(interaction: discord.Interaction[Any]) -> ServiceHost:
    """`interaction.client` seen as a `ServiceHost` (the bot built by `app.py` is one)."""
    return cast(ServiceHost, interaction.client)
