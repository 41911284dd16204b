"""Slash-command cogs: thin Discord adapters over the job service and the ledger."""

from __future__ import annotations

from discord.ext import commands

from .imagine import ImagineCog
from .info import InfoCog
from .quota import QuotaCog
from .usage import UsageCog

__all__ = ["COGS", "ImagineCog", "InfoCog", "QuotaCog", "UsageCog"]

#: Every cog the bot adds in `setup_hook`, in order.
COGS: tuple[type[commands.Cog], ...] = (ImagineCog, InfoCog, QuotaCog, UsageCog)
