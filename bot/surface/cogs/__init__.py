"""Slash-command cogs: thin Discord adapters over the job service and the ledger."""

from __future__ import annotations

from discord.ext import commands

from ...services import JobActions, Services
from .describe import DescribeButton, DescribeCog
from .edit import make_edit_cog
from .imagine import make_imagine_cog
from .info import InfoCog
from .quota import QuotaCog
from .settings import SettingsCog
from .usage import UsageCog

__all__ = [
    "DescribeButton",
    "DescribeCog",
    "InfoCog",
    "QuotaCog",
    "SettingsCog",
    "UsageCog",
    "make_cogs",
    "make_edit_cog",
    "make_imagine_cog",
]


def make_cogs(services: Services, jobs: JobActions) -> list[commands.Cog]:
    """Every cog the bot adds in `setup_hook`, in order."""
    # From the config: the cogs are added at login, before the models load.
    models = [(spec.name, spec.description) for spec in services.config.engine.model_specs]
    return [
        make_imagine_cog(services.engine.limits, jobs, models),
        make_edit_cog(jobs, models),
        DescribeCog(services),
        InfoCog(services),
        QuotaCog(services),
        SettingsCog(services),
        UsageCog(services),
    ]
