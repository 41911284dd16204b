"""Where a model comes from, in the operator's terms: a hub id or a path, and why a download
failed. Torch-free: the loader and `imagine-bot doctor` (which loads no model) share it.
"""

from __future__ import annotations

import os

__all__ = ["CHECKPOINT_SUFFIXES", "first_line", "hub_problem", "looks_local"]

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
        return (
            f"cannot reach the Hugging Face hub to download {source} (no network?): check "
            "the connection or proxy, or give a local folder"
        )
    return None


def looks_local(source: str) -> bool:
    """A path, not a hub id ("org/name"): the operator meant a folder on this disk."""
    return source.startswith(("/", ".", "~", "\\")) or source.count("/") > 1 or ":" in source
