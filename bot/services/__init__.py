"""What the bot's parts share, and the contract between the Discord surface and the jobs.

- `bundle.py`: `Services`, the long-lived resources of one bot process built by `app.py`,
  and the protocols the parts take instead of the whole client;
- `options.py`: `ImagineOptions`, what a member asked `/imagine` for.
"""

from .bundle import Channels, JobActions, JobRef, ServiceHost, Services, host_of

__all__ = ["Channels", "JobActions", "JobRef", "ServiceHost", "Services", "host_of"]
