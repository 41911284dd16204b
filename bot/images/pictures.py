"""Fetching the picture a user attached to `/imagine`: only from Discord, small and quick.

An attachment option arrives as a URL the client could have forged, so the bot fetches only
from Discord's CDN hosts over HTTPS (or, with `[discord] api_base_url` pointing at a
Discord-compatible server, from that server's own host): never from an address a user
chose. The size Discord declares is checked before the download, and the download is cut
off at the limit and after `FETCH_TIMEOUT`, whatever the server says. Decoding is
`engine.picture.decode_picture`, off the event loop on `DECODE_THREADS` threads of its own: a
small file can hold a 40-megapixel picture (a second of CPU and ~0.5 GB to decode), so ten
members posting one at once queue for those threads instead of taking ten times the memory.
"""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import aiohttp

from engine import InvalidRequest
from engine.picture import decode_picture

from ..errors import BotError
from ..timing.limits import DISCORD_API

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = [
    "CDN_HOSTS",
    "DECODE_THREADS",
    "FETCH_TIMEOUT",
    "BadPicture",
    "PictureRef",
    "fetch_picture",
]

#: Where Discord serves attachments.
CDN_HOSTS = frozenset({"cdn.discordapp.com", "media.discordapp.net"})
#: Seconds a download may take in all.
FETCH_TIMEOUT = 15.0
#: Pictures decoded at once (the rest wait their turn, holding only their compressed bytes).
DECODE_THREADS = 2


@functools.cache
def _decoder() -> ThreadPoolExecutor:
    """The decoding threads (made at the first picture, shared by the process)."""
    return ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="imagine-decode")


class BadPicture(BotError):
    """The attachment cannot be used; the message says why (nothing was charged)."""


@dataclass(frozen=True, slots=True)
class PictureRef:
    """An attachment as the interaction describes it."""

    url: str
    filename: str
    size: int  # bytes, as Discord declares them


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port


def allowed(url: str, api_base_url: str = DISCORD_API) -> bool:
    """Whether the bot may fetch `url`: Discord's CDN over HTTPS, or the configured
    Discord-compatible server's own scheme, host and port."""
    scheme, host, port = _origin(url)
    if scheme == "https" and host in CDN_HOSTS and port in (None, 443):
        return True
    api = _origin(api_base_url)
    if api[1] in ("discord.com", "discordapp.com"):
        return False
    return (scheme, host, port) == api


async def fetch_picture(ref: PictureRef, *, api_base_url: str, max_mb: float) -> Image:
    """The attachment's picture, or `BadPicture` saying what is wrong with it."""
    if not allowed(ref.url, api_base_url):
        raise BadPicture("That attachment is not on Discord's servers, so it was not fetched.")
    max_bytes = round(max_mb * 2**20)
    limit_mb = f"{max_mb:g} MB"
    if ref.size > max_bytes:
        raise BadPicture(f"That picture is {ref.size / 2**20:.1f} MB; the limit is {limit_mb}.")
    try:
        data = await asyncio.wait_for(_download(ref.url, max_bytes), FETCH_TIMEOUT)
    except TimeoutError:
        raise BadPicture("Discord took too long to send the picture. Try again.") from None
    except aiohttp.ClientError as exc:
        raise BadPicture(f"The picture could not be downloaded ({exc}). Try again.") from None
    if data is None:
        raise BadPicture(f"That picture is larger than the limit of {limit_mb}.")
    try:
        return await asyncio.get_running_loop().run_in_executor(_decoder(), decode_picture, data)
    except InvalidRequest as exc:
        raise BadPicture(str(exc)) from None


async def _download(url: str, max_bytes: int) -> bytes | None:
    """The body, or None as soon as it passes `max_bytes` (never trusting Content-Length)."""
    timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT)
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        http.get(url, allow_redirects=False) as response,
    ):
        response.raise_for_status()
        chunks: list[bytes] = []
        total = 0
        async for chunk in response.content.iter_chunked(64 * 1024):
            total += len(chunk)
            if total > max_bytes:
                return None
            chunks.append(chunk)
        return b"".join(chunks)
