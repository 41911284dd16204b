"""`ImageStore`: the one owner of image files on disk, for work that outlives a message.

Two kinds of file, named by the job's id and key (`JobRef`), so a reset database can never
find another job's files:

- `inputs/<id>-<key>.png`: the exact picture an image-to-image job starts from (an
  attachment, or the image an Upscale or Vary press chose), or the first picture an edit
  by instruction changes (`inputs/<id>-<key>-r<n>.png` its other references), written
  before the job is queued, so a restart can run the job again;
- `inputs/<id>-<key>-mask.png`: an inpainting job's mask (Zoom Out, Pan, Vary (Region),
  `/inpaint`), with the A1111 fields saying how its canvas was made as the PNG's text, so
  a restart and a Reroll make the same canvas again;
- `outputs/<id>-<key>-<n>.png`: each full-size result, written before it is posted, so
  Upscale and Vary work on a grid's tiles (posted scaled down) and after a restart.

Files older than `keep_days` are deleted by `prune`. Writes go to a temporary name and are
renamed into place, so a crash never leaves half a file, and a write that fails (a full disk)
removes its temporary file. Blocking: callers on the event loop use `asyncio.to_thread`.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from PIL.Image import Image

    from engine import GeneratedImage

    from ..ledger import JobRef

__all__ = ["ImageStore", "png_to_rgb", "why_not_written"]

DAY = 24 * 3600.0


def why_not_written(exc: OSError) -> str:
    """A failed write in words a member understands ("the disk is full")."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full"
    if exc.errno == errno.EROFS:
        return "the disk is read-only"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "the bot may not write there"
    return (exc.strerror or str(exc)).lower()


def png_to_rgb(data: bytes) -> Image:
    """A stored PNG (ours, so trusted) as an RGB image to start image-to-image from."""
    from PIL import Image as PILImage

    with PILImage.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


class ImageStore:
    def __init__(self, root: Path, *, keep_days: int) -> None:
        self.root = root
        self.keep_days = keep_days

    def _input(self, job: JobRef, reference: int = 0) -> Path:
        extra = f"-r{reference}" if reference else ""
        return self.root / "inputs" / f"{job.id}-{job.key}{extra}.png"

    def _output(self, job: JobRef, index: int) -> Path:
        return self.root / "outputs" / f"{job.id}-{job.key}-{index}.png"

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with tmp.open("wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):  # a full disk: leave no partial file behind
                tmp.unlink()
            raise

    @staticmethod
    def _read(path: Path) -> bytes | None:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None

    def save_input(self, job: JobRef, image: Image, reference: int = 0) -> None:
        buf = io.BytesIO()
        image.save(buf, format="PNG", compress_level=1)  # fast: it is read back once or twice
        self._write(self._input(job, reference), buf.getvalue())

    def load_input(self, job: JobRef) -> Image | None:
        """The picture job `job` starts from, or None when it is gone."""
        data = self._read(self._input(job))
        return None if data is None else png_to_rgb(data)

    def save_references(self, job: JobRef, images: Sequence[Image]) -> None:
        """The pictures an edit by instruction reads, in order (the first as the input)."""
        for n, image in enumerate(images):
            self.save_input(job, image, n)

    def load_references(self, job: JobRef) -> tuple[Image, ...]:
        """The pictures `save_references` kept for job `job` (empty when they are gone)."""
        first = self.load_input(job)
        if first is None:
            return ()
        found = [first]
        while (data := self._read(self._input(job, len(found)))) is not None:
            found.append(png_to_rgb(data))
        return tuple(found)

    def _mask(self, job: JobRef) -> Path:
        return self.root / "inputs" / f"{job.id}-{job.key}-mask.png"

    def save_mask(self, job: JobRef, mask: Image, fields: Sequence[tuple[str, str]]) -> None:
        """Job `job`'s mask, and the `fields` (A1111's) that say how its canvas was made."""
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        for key, value in fields:
            info.add_text(key, value)
        buf = io.BytesIO()
        mask.save(buf, format="PNG", pnginfo=info, compress_level=1)
        self._write(self._mask(job), buf.getvalue())

    def mask_png(self, job: JobRef) -> bytes | None:
        """Job `job`'s mask as kept (a PNG with its canvas fields); None when gone."""
        return self._read(self._mask(job))

    def load_mask(self, job: JobRef) -> tuple[Image, tuple[tuple[str, str], ...]] | None:
        """Job `job`'s mask ("L") and canvas fields, in their order; None when gone."""
        from PIL import Image as PILImage

        data = self.mask_png(job)
        if data is None:
            return None
        with PILImage.open(io.BytesIO(data)) as image:
            fields = tuple((str(k), str(v)) for k, v in getattr(image, "text", {}).items())
            return image.convert("L"), fields

    def save_outputs(self, job: JobRef, images: Sequence[GeneratedImage]) -> None:
        """Each image under its own index (its place in the job's seed order); raises the
        first write's `OSError` (those before it are kept)."""
        for image in images:
            self._write(self._output(job, image.index), image.png)

    def load_output(self, job: JobRef, index: int) -> bytes | None:
        """Image `index` (from 0) of job `job` at full size, or None when it is gone."""
        return self._read(self._output(job, index))

    def prune(self, now: float | None = None) -> int:
        """Delete files older than `keep_days`; returns how many."""
        cutoff = (time.time() if now is None else now) - self.keep_days * DAY
        removed = 0
        for folder in (self.root / "inputs", self.root / "outputs"):
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                try:
                    if path.stat().st_mtime < cutoff:
                        path.unlink()
                        removed += 1
                except FileNotFoundError:
                    continue
        return removed
