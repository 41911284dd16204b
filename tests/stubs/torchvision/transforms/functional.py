"""What spandrel imports from torchvision at registry time; none of it runs in the tests.
See `tests/stubs/torchvision/__init__.py`."""

from __future__ import annotations

import enum
from typing import Any


class InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    BILINEAR = "bilinear"


def _absent(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("torchvision is a test stand-in here: LaMa and RestoreFormer")


rotate = _absent
normalize = _absent
