"""How much memory a model's weights take, from its files, before it is loaded.

The engine refuses at start-up a model that can never fit the memory it may use (`[engine]
max_memory_gb`, else the GPU's), and `imagine-bot doctor` says whether each model fits the
GPU it finds. Both need the size before loading (a model too big for the GPU fails its load
with a CUDA error, not a line that says what to change), so it is estimated here from the
weight files' headers: each component's parameters, at the dtype they are loaded in, with
the denoiser's matrices at the quantized width (`quantize`), and with `offload = "model"`
only the largest component on the device at a time. Once loaded, a model's own bytes
(`loader.LoadedModel.resident_bytes`) replace the estimate.

Torch-free: a `.safetensors` header is an 8-byte length and a JSON table of names, dtypes and
shapes (the format's whole layout), read here without the weights.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DTYPE_BYTES",
    "QUANTIZED_BYTES",
    "Weights",
    "gib",
    "parameters_in",
    "weights_of_files",
]

#: Bytes of one parameter at each loaded dtype.
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
#: Bytes of one quantized matrix weight (int8 and fp8: one byte, a scale per row aside; nf4:
#: half a byte and a 4-byte scale per block of 64).
QUANTIZED_BYTES = {"int8": 1.0, "fp8": 1.0, "nf4": 0.5 + 4 / 64}
#: Variants of a diffusers folder's weights (`model.fp16.safetensors`), never added twice.
_VARIANTS = ("fp16", "bf16", "fp32", "fp8", "non_ema", "ema")


def gib(n: float) -> str:
    """Bytes in GiB, or MiB below one GiB (small models, tests)."""
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


@dataclass(frozen=True, slots=True)
class Weights:
    """A model's parameters by component, from its files; `matrices` counts the parameters in
    2-D weights of the denoiser (the layers quantization shrinks). `complete` is False when
    some components were not on this disk (a transformer file whose reference repository is
    not downloaded yet): the estimate then covers the files found."""

    components: Mapping[str, int]
    denoiser: str = ""
    matrices: int = 0
    complete: bool = True

    @property
    def parameters(self) -> int:
        return sum(self.components.values())

    def bytes(self, dtype: str = "bfloat16", quantize: str = "none", offload: str = "none") -> int:
        """Bytes on the device: every component at `dtype`, the denoiser's matrices at the
        quantized width; with `offload = "model"`, the largest component only."""
        width = DTYPE_BYTES[dtype]
        sizes = {name: n * width for name, n in self.components.items()}
        if quantize in QUANTIZED_BYTES and self.denoiser in sizes:
            rest = self.components[self.denoiser] - self.matrices
            sizes[self.denoiser] = int(rest * width + self.matrices * QUANTIZED_BYTES[quantize])
        if offload == "model":
            return max(sizes.values(), default=0)
        return sum(sizes.values())


def _tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape, from a `.safetensors` header (nothing else is read)."""
    with path.open("rb") as f:
        size = int.from_bytes(f.read(8), "little")
        if not 0 < size < 100_000_000:
            raise ValueError(f"{path} is not a safetensors file")
        header = json.loads(f.read(size))
    return {
        name: tuple(int(n) for n in entry["shape"])
        for name, entry in header.items()
        if name != "__metadata__"
    }


def _count(shapes: Iterable[tuple[int, ...]]) -> tuple[int, int]:
    """(parameters, of which in 2-D matrices)."""
    total = matrices = 0
    for shape in shapes:
        n = 1
        for d in shape:
            n *= d
        total += n
        if len(shape) == 2:
            matrices += n
    return total, matrices


def _weight_files(folder: Path) -> list[Path]:
    """A component folder's weight files, one variant only (the plain one when present)."""
    files = sorted(folder.glob("*.safetensors"))
    plain = [f for f in files if not any(f".{v}." in f.name for v in _VARIANTS)]
    if plain:
        return plain
    for variant in _VARIANTS:
        chosen = [f for f in files if f".{variant}." in f.name]
        if chosen:
            return chosen
    return []


def parameters_in(folder: Path) -> int:
    """The parameters of a transformers model folder's weight files (the describe model's,
    the tagger's); 0 when it has none in `.safetensors`."""
    return sum(_count(_tensor_shapes(f).values())[0] for f in _weight_files(folder))


def _folder_weights(folder: Path, denoisers: Iterable[str]) -> Weights:
    """A diffusers folder's components (as its `model_index.json` lists them)."""
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    components: dict[str, int] = {}
    denoiser, matrices = "", 0
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or entry[0] is None:
            continue
        files = _weight_files(folder / name)
        if not files:
            continue
        total = mats = 0
        for file in files:
            n, m = _count(_tensor_shapes(file).values())
            total, mats = total + n, mats + m
        components[name] = total
        if name in denoisers:
            denoiser, matrices = name, mats
    return Weights(components, denoiser, matrices)


def weights_of_files(
    source: Path, *, base: Path | None = None, denoisers: Iterable[str] = ("unet", "transformer")
) -> Weights:
    """The weights of a diffusers folder, or of a single file: a whole SD checkpoint (its
    UNet is `model.diffusion_model.*`), or a transformer whose other components are those of
    the `base` folder (None: not on this disk; the estimate is then incomplete)."""
    denoisers = tuple(denoisers)
    if source.is_dir():
        return _folder_weights(source, denoisers)
    shapes = _tensor_shapes(source)
    unet = {k: v for k, v in shapes.items() if k.startswith("model.diffusion_model.")}
    if unet:  # a whole checkpoint: UNet, VAE and text encoders in one file
        n, m = _count(unet.values())
        rest, _ = _count(v for k, v in shapes.items() if k not in unet)
        return Weights({"unet": n, "others": rest}, "unet", m)
    n, m = _count(shapes.values())
    others = _folder_weights(base, denoisers) if base is not None else None
    components = {"transformer": n}
    if others is not None:
        components |= {k: v for k, v in others.components.items() if k != others.denoiser}
    return Weights(components, "transformer", m, complete=others is not None)
