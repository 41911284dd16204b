"""Where a model comes from, in the operator's terms: a hub id or a path, and why a download
failed. Torch-free: the loader and `imagine-bot doctor` (which loads no model) share it.

A hub that cannot be reached is found out by one quick request (`hub_unreachable`) before a
load asks huggingface_hub for files: huggingface_hub retries a missing file five times with
back-off (23 s when the name does not resolve, minutes when a firewall drops the packets),
logging every try.
"""

from __future__ import annotations

import os
import threading
import time

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "HUB_PROBE_TIMEOUT_S",
    "first_line",
    "hub_offline",
    "hub_problem",
    "hub_unreachable",
    "looks_local",
    "not_a_source",
    "unreachable_message",
]

#: The files a model `source` may be besides a folder or a hub id: one checkpoint file.
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")


def first_line(exc: BaseException) -> str:
    """An error's first line (library errors often carry a page of advice after it)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _causes(exc: BaseException) -> list[str]:
    """The class names along an exception's chain (diffusers wraps the hub's errors)."""
    names: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(names) < 20:
        names.append(type(seen).__name__)
        seen = seen.__cause__ or seen.__context__
    return names


def hub_problem(source: str, exc: BaseException) -> str | None:
    """The cause of a failed hub download, in the operator's terms, or None."""
    causes = _causes(exc)
    page = f"https://huggingface.co/{source}"
    if "GatedRepoError" in causes:
        return (
            f"the model {source} is gated: accept its licence on {page} with your account, "
            "then set HF_TOKEN to one of your access tokens"
        )
    if "RepositoryNotFoundError" in causes:
        return (
            f"there is no model {source} on the Hugging Face hub: check the id "
            "(a private model needs HF_TOKEN), or give a local folder"
        )
    if "EntryNotFoundError" in causes:
        return f"{source} on the Hugging Face hub is not a diffusers model (no model_index.json)"
    if "OfflineModeIsEnabled" in causes or (
        "LocalEntryNotFoundError" in causes and os.environ.get("HF_HUB_OFFLINE") in {"1", "ON"}
    ):
        return (
            f"the model {source} is not in the local cache and downloads are off "
            "(HF_HUB_OFFLINE is set): unset it to download the model once"
        )
    network = {"ConnectError", "ConnectionError", "ConnectTimeout", "ConnectionRefusedError"}
    if "LocalEntryNotFoundError" in causes or network & set(causes):
        probed = _probed[2] if _probed is not None else None
        return unreachable_message(source, probed or "no network?")
    return None


def unreachable_message(source: str, why: str = "no network?") -> str:
    """A hub model that is not cached while the hub cannot be reached: what to do."""
    return (
        f"the model {source} is not in the local cache and the Hugging Face hub cannot be reached "
        f"({why}): check the network or proxy (HTTPS_PROXY), or give a local folder; once a "
        "model is cached, HF_HUB_OFFLINE=1 loads it without asking the hub"
    )


#: How long the probe waits for the hub's answer.
HUB_PROBE_TIMEOUT_S = 5.0
#: How long a probe's verdict is reused (a bot loading several models probes once).
_PROBE_TTL_S = 30.0
_probe_lock = threading.Lock()
_probed: tuple[float, str, str | None] | None = None  # (when, endpoint, why unreachable)


def hub_offline() -> bool:
    """Whether downloads are off (`HF_HUB_OFFLINE=1`): only the cache is read."""
    from huggingface_hub import constants

    check = getattr(constants, "is_offline_mode", None)
    return bool(check() if check is not None else constants.HF_HUB_OFFLINE)


def hub_unreachable() -> str | None:
    """Why the Hugging Face hub cannot be reached now (the first line of the error), or None
    when it answers (any HTTP status) or downloads are off. One request, no retries, at most
    `HUB_PROBE_TIMEOUT_S`, through huggingface_hub's own HTTP client (its proxy settings and
    `HF_ENDPOINT`)."""
    global _probed
    if hub_offline():
        return None
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    endpoint = constants.ENDPOINT
    with _probe_lock:
        now = time.monotonic()
        if _probed is not None and _probed[1] == endpoint and now - _probed[0] < _PROBE_TTL_S:
            return _probed[2]
        try:
            get_session().head(endpoint, timeout=HUB_PROBE_TIMEOUT_S)
            why = None
        except Exception as exc:  # any failure to get an answer: DNS, refused, timeout, TLS
            why = first_line(exc) or type(exc).__name__
        _probed = (now, endpoint, why)
        return why


def not_a_source(source: str) -> str | None:
    """Why `source` cannot name a model when it is neither a builtin nor on this disk: a hub
    id has an owner (`org/name`); a bare word is a typo or a configured name."""
    if source.startswith("builtin:") or looks_local(source) or source.count("/") == 1:
        return None
    return (
        f"{source!r} is not a model source: give a hub id (org/name, e.g. "
        "stabilityai/sd-turbo), a folder, a .safetensors file or builtin:tiny"
    )


def looks_local(source: str) -> bool:
    """A path, not a hub id ("org/name"): the operator meant a folder on this disk."""
    return source.startswith(("/", ".", "~", "\\")) or source.count("/") > 1 or ":" in source
