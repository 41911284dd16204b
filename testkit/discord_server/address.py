"""Where the server listens, and the URLs derived from it (known once :meth:`start` binds a port).

One object that the REST routes, the gateway (``resume_gateway_url``) and the message store
(attachment URLs) read, so none of them needs the server to learn its own address.
"""

from __future__ import annotations

from dataclasses import dataclass

from .attachments import Attachment
from .state import Channel

API_PREFIX = "/api/v10"


@dataclass
class Address:
    """Host and port; ``port`` 0 until the server has bound a free one."""

    host: str = "127.0.0.1"
    port: int = 0

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_base_url(self) -> str:
        """Value for ``discord.http.Route.BASE``."""
        return self.base_url + API_PREFIX

    @property
    def gateway_url(self) -> str:
        return f"ws://{self.host}:{self.port}/gateway"

    def attachment_url(self, attachment: Attachment, channel: Channel | None) -> str:
        """Where a stored file is served (``GET /attachments/{channel}/{id}/{filename}``)."""
        channel_id = channel.id if channel is not None else 0
        return f"{self.base_url}/attachments/{channel_id}/{attachment.id}/{attachment.filename}"


__all__ = ["API_PREFIX", "Address"]
