"""What the bot's parts share, and the contract between the Discord surface and the jobs.

- `bundle.py`: `Services`, the long-lived resources of one bot process built by `app.py`,
  and what the parts need of the client (`Channels`, `ServiceHost`);
- `actions.py`: `JobActions`, what `/imagine` and the job buttons ask of the job service,
  and the buttons' `Action`s;
- `options.py`: `ImagineOptions`, what a member asked `/imagine` for.
"""

from .actions import ASKS, CANVAS, PER_IMAGE, UPSCALES, Action, JobActions, Press
from .bundle import Channels, ServiceHost, Services, host_of
from .options import MAX_PROMPT, ImagineOptions

__all__ = [
    "ASKS",
    "CANVAS",
    "MAX_PROMPT",
    "PER_IMAGE",
    "UPSCALES",
    "Action",
    "Channels",
    "ImagineOptions",
    "JobActions",
    "Press",
    "ServiceHost",
    "Services",
    "host_of",
]
