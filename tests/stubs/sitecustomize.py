"""Lets spandrel import in a test process without torchvision (put this folder on
PYTHONPATH: the GAN upscaler tests of tests/engine/test_cli.py do).

spandrel imports torchvision while it builds its registry, for two architectures (LaMa,
RestoreFormer) the tests never load; the tests load an ESRGAN. PyPI's torchvision is built for
PyPI's CUDA torch and fails to import beside the CPU torch this project's CI installs
("operator torchvision::nms does not exist"), and no CPU build of it can be installed here.
So, only where no torchvision is installed, spandrel is imported once with stand-in modules
that raise if used, which are then taken away again: nothing else (transformers' image
processors) ever sees a torchvision.
"""

from __future__ import annotations

import enum
import importlib.util
import sys
import types
from typing import Any

_NAMES = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")


def _absent(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("torchvision is absent: a test stand-in for spandrel's import")


def _preload_spandrel() -> None:
    if importlib.util.find_spec("torchvision") is not None:
        return  # the real one
    if importlib.util.find_spec("spandrel") is None:
        return
    functional = types.ModuleType(_NAMES[2])
    functional.InterpolationMode = enum.Enum("InterpolationMode", "NEAREST BILINEAR")  # type: ignore[attr-defined]
    functional.rotate = functional.normalize = _absent  # type: ignore[attr-defined]
    modules = [types.ModuleType(_NAMES[0]), types.ModuleType(_NAMES[1]), functional]
    sys.modules.update(zip(_NAMES, modules, strict=True))
    try:
        import spandrel  # noqa: F401
    finally:
        for name in _NAMES:
            sys.modules.pop(name, None)


_preload_spandrel()
