"""The `Model hash` a model's images carry: A1111's AutoV2 for a checkpoint file, the hub
snapshot's commit, or a hash of a folder's file list and configs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from .config import EngineConfig, ModelSpec
from .tiny import BUILTIN_MODELS, builtin_folder, default_cache_dir

__all__ = [
    "model_hash",
    "spec_hash",
]


log = logging.getLogger(__name__)


def model_hash(files: Path | None, cache_dir: Path | None = None) -> str:
    """A short, stable id of a model's files for the PNG's `Model hash`.

    A single checkpoint file: A1111's and civitai's (AutoV2), the first 10 hex digits of the
    file's SHA-256, so other tools find the model; it is computed once and kept in
    `<cache_dir>/file-hashes.json` by path, size and modification time. A hub snapshot: its
    commit. Another folder: a hash of its file names, sizes and config files (hashing gigabytes
    of weights on every start would take minutes)."""
    if files is None:
        return ""
    if files.is_file():
        return _file_sha256(files, cache_dir or default_cache_dir())[:10]
    if files.parent.name == "snapshots" and len(files.name) >= 10:
        return files.name[:10]
    digest = hashlib.sha256()
    for path in sorted(p for p in files.rglob("*") if p.is_file()):
        relative = path.relative_to(files).as_posix()
        digest.update(f"{relative}:{path.stat().st_size}\n".encode())
        if path.suffix == ".json":
            digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


def spec_hash(spec: ModelSpec, config: EngineConfig) -> str:
    """The `Model hash` a model's images carry, from its files on this disk without loading
    it (as `load_model` hashes them); "" for a hub model, whose images carry none."""
    if spec.source in BUILTIN_MODELS:
        return model_hash(builtin_folder(spec.source, config.cache_dir), config.cache_dir)
    local = Path(spec.source).expanduser()
    return model_hash(local, config.cache_dir) if local.exists() else ""


def _file_sha256(path: Path, cache_dir: Path) -> str:
    """The file's SHA-256 (hex), from the cache while its size and modification time hold."""
    stat = path.stat()
    key, stamp = str(path.resolve()), [stat.st_size, stat.st_mtime_ns]
    index = cache_dir / "file-hashes.json"
    try:
        known = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    entry = known.get(key)
    if isinstance(entry, dict) and entry.get("stamp") == stamp and entry.get("sha256"):
        return str(entry["sha256"])
    log.info("hashing %s (%.1f GB) for its model hash, once", path, stat.st_size / 1e9)
    with path.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    known[key] = {"stamp": stamp, "sha256": digest}
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        partial = index.with_name(f"{index.name}.{os.getpid()}.tmp")
        partial.write_text(json.dumps(known, indent=1), encoding="utf-8")
        partial.replace(index)
    except OSError as exc:  # a read-only cache: hash again next time
        log.warning("cannot keep the hash of %s in %s: %s", path, index, exc)
    return digest
