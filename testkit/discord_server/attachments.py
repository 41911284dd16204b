"""A stored file: what the bot uploaded (or a user attached to a command), served back by URL."""

from __future__ import annotations

import mimetypes
import struct
from dataclasses import dataclass


@dataclass(eq=False)
class Attachment:
    """A stored file; ``data`` is what the bot uploaded, served at ``url``."""

    id: int
    filename: str
    data: bytes
    content_type: str | None
    url: str
    description: str | None = None

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def spoiler(self) -> bool:
        """Discord marks files whose name starts with ``SPOILER_`` as spoilers."""
        return self.filename.startswith("SPOILER_")

    @property
    def dimensions(self) -> tuple[int, int] | None:
        """(width, height) for PNG files, as Discord reports for images."""
        if self.data[:8] == b"\x89PNG\r\n\x1a\n" and len(self.data) >= 24:
            width, height = struct.unpack(">II", self.data[16:24])
            return width, height
        return None

    def __repr__(self) -> str:
        return f"Attachment({self.filename!r}, {self.size} bytes, {self.content_type})"


def guess_content_type(filename: str, declared: str | None) -> str | None:
    """Discord sniffs the type; discord.py always declares octet-stream, so trust the name."""
    if declared and declared != "application/octet-stream":
        return declared
    guessed, _ = mimetypes.guess_type(filename)
    return guessed or declared


__all__ = ["Attachment", "guess_content_type"]
