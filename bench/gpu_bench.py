"""GPU figures: full-size SD 1.5 (512x512) and SDXL (1024x1024) architectures, random weights,
fp16, SDPA, 25 steps: images/s, it/s, seconds per image and peak GPU memory at each batch
size: the raw pipeline plain, with channels-last, with `torch.compile` on the UNet and with
the `DeepCache` package's helper (`deepcache`), and through the engine (`engine`: as the bot
runs it; `engine_compiled`: `[engine] compile` (`--compile-mode`, "max-autotune" unless
given) with its batch-size buckets, warmed up at start-up; `engine_cache` and
`engine_compiled_cache`: the same with `[models] cache = "deepcache"` on every request,
`--cache-interval`, `--cache-branch`). JSON is written after every row, so a run cut off by a
timeout still keeps what it measured.

Needs CUDA (run it on a GPU machine; tests never do). `--smoke` runs scaled-down models on the
CPU for a few seconds, only to check the script itself.

    python -m bench.gpu_bench [--models sd15 sdxl] [--batches 1 2 4 8 16] [--docs]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from .architectures import build
from .dit_architectures import DIT_CALLS, build_dit
from .report import machine, markdown_table, save, update_docs

SIZES = {"sd15": 512, "sdxl": 1024} | {name: call["size"] for name, call in DIT_CALLS.items()}
#: In the order they run: the raw pipeline's variants change it for the next ones (channels
#: last, then compiled), so the package's DeepCache runs on the plain one.
VARIANTS = (
    "plain",
    "deepcache",
    "channels_last",
    "compile",
    "engine",
    "engine_cache",
    "engine_compiled",
    "engine_compiled_cache",
)
#: The diffusion transformers' variants: bf16, and the transformer quantized as
#: `[models.<name>] quantize = "fp8"` does (torchao's fp8 dynamic-activation config).
DIT_VARIANTS = ("plain", "fp8")


def measure(
    pipe: Any, batch: int, size: int, steps: int, repeats: int, guidance: float = 7.0
) -> dict[str, float]:
    def call() -> None:
        pipe(
            prompt=["a robot painting with water colours"] * batch,
            num_inference_steps=steps,
            guidance_scale=guidance,
            width=size,
            height=size,
            generator=[torch.Generator("cpu").manual_seed(i) for i in range(batch)],
            output_type="pil",
        )

    call()  # warm-up (and compile, when compiled)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(repeats):
        call()
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / repeats
    return figures(batch, steps, seconds, cuda)


def figures(batch: int, steps: int, seconds: float, cuda: bool) -> dict[str, float]:
    return {
        "images_per_s": batch / seconds,
        "it_per_s": steps / seconds,
        "s_per_image": seconds / batch,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0,
    }


async def measure_engine(
    folder: Path,
    batch: int,
    size: int,
    args: argparse.Namespace,
    *,
    compiled: bool,
    cached: bool,
) -> dict[str, float]:
    """The same work through `Engine.generate`, as the bot asks for it."""
    from engine import Engine, EngineConfig, ImageRequest, ModelSpec

    smoke, steps, repeats = args.smoke, args.steps, args.repeats
    models = ()
    if cached:  # DeepCache on every request
        cache = {"cache_interval": args.cache_interval, "cache_branch": args.cache_branch}
        models = (ModelSpec("bench", str(folder), cache="deepcache", cache_for="all", **cache),)
    config = EngineConfig(
        model=str(folder),
        device="cpu" if smoke else "cuda",
        dtype="float32" if smoke else "float16",
        safety_checker=False,
        max_batch_size=batch,
        max_count=batch,
        max_width=size,
        max_height=size,
        batch_wait_ms=0,
        compile=("default" if smoke else args.compile_mode) if compiled else "off",
        compile_backend="eager" if smoke else "inductor",
        compile_buckets=(2 * batch,),
        models=models,
    )
    request = ImageRequest(
        "a robot painting with water colours",
        seed=1,
        steps=steps,
        guidance=7.0,
        width=size,
        height=size,
        count=batch,
    )
    async with Engine(config) as engine:
        await engine.generate(request)  # warm-up
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(repeats):
            await engine.generate(request)
        seconds = (time.perf_counter() - start) / repeats
    return figures(batch, steps, seconds, cuda)


def guarded(call: Callable[[], dict[str, float]]) -> dict[str, float]:
    """`call`'s figures, or a row saying it ran out of GPU memory (peak -1: "OOM")."""
    try:
        return call()
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return {"images_per_s": 0.0, "it_per_s": 0.0, "s_per_image": 0.0, "peak_gib": -1.0}


def weights_gib(pipe: Any) -> float:
    """What the pipeline's modules hold, parameters and buffers (quantized ones as stored)."""
    modules = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
    tensors = [t for m in modules for t in (*m.parameters(), *m.buffers())]
    return sum(_nbytes(t) for t in tensors) / 2**30


def _nbytes(t: Any) -> int:
    """A tensor's bytes, looking inside torchao's tensor subclasses (their data and scales)."""
    if type(t) not in (torch.Tensor, torch.nn.Parameter) and hasattr(t, "__tensor_flatten__"):
        inner = (getattr(t, name) for name in t.__tensor_flatten__()[0])
        return sum(_nbytes(x) for x in inner if x is not None)
    return t.numel() * t.element_size()


def run_dit(name: str, args: argparse.Namespace, result: dict[str, Any], out: str) -> None:
    """A diffusion transformer's raw pipeline in bf16, then with its transformer in fp8, at
    its card's steps and guidance (`--steps` is for SD): speed, peak and resident memory."""
    smoke, rows = args.smoke, result["rows"]
    call = DIT_CALLS[name]
    size = 64 if smoke else call["size"]
    steps = 2 if smoke else call["num_inference_steps"]
    dtype = torch.float32 if smoke else torch.bfloat16
    pipe = build_dit(
        name, device="cpu" if smoke else "cuda", dtype=dtype, scale=0.05 if smoke else 1
    )
    for variant in [v for v in DIT_VARIANTS if v in args.variants]:
        if variant == "fp8":
            if smoke or torch.cuda.get_device_capability() < (8, 9):
                print(f"{name} fp8: needs an fp8 GPU (compute capability 8.9+); skipped")
                continue
            from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, quantize_

            quantize_(pipe.transformer, Float8DynamicActivationFloat8WeightConfig())
        for batch in args.batches:
            got = guarded(
                partial(measure, pipe, batch, size, steps, args.repeats, call["guidance_scale"])
            )
            row = {"model": name, "size": size, "variant": variant, "batch": batch, "steps": steps}
            rows.append(row | got | {"weights_gib": weights_gib(pipe)})
            print(rows[-1], flush=True)
            save(out, result)
    del pipe
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = "cpu" if args.smoke else "cuda"
    dtype = torch.float32 if args.smoke else torch.float16
    rows: list[dict[str, Any]] = []
    result = {"benchmark": "gpu", "machine": machine(), "settings": vars(args), "rows": rows}
    name_out = f"{args.out}_smoke" if args.smoke else args.out
    for name in args.models:
        if name in DIT_CALLS:
            run_dit(name, args, result, name_out)
            continue
        size = 64 if args.smoke else SIZES[name]
        pipe = build(name, device=device, dtype=dtype, scale=0.1 if args.smoke else 1.0)
        folder = None
        if any(v.startswith("engine") for v in args.variants):
            folder = Path(tempfile.mkdtemp(prefix=f"gpu-bench-{name}-"))
            pipe.save_pretrained(folder)
        for variant in sorted(args.variants, key=lambda v: v.startswith("engine")):
            if variant.startswith("engine"):
                assert folder is not None
                for batch in args.batches:
                    engine_run = measure_engine(
                        folder,
                        batch,
                        size,
                        args,
                        compiled=variant.startswith("engine_compiled"),
                        cached=variant.endswith("_cache"),
                    )
                    got = guarded(partial(asyncio.run, engine_run))
                    rows.append({"model": name, "size": size, "variant": variant, "batch": batch})
                    rows[-1] |= got
                    print(rows[-1], flush=True)
                    save(name_out, result)
                continue
            if variant == "channels_last":
                pipe.unet.to(memory_format=torch.channels_last)
            if variant == "compile":
                pipe.unet = torch.compile(pipe.unet)
            helper = None
            if variant == "deepcache":  # the package's own helper on the raw pipeline
                from DeepCache import DeepCacheSDHelper

                helper = DeepCacheSDHelper(pipe=pipe)
                helper.set_params(
                    cache_interval=args.cache_interval, cache_branch_id=args.cache_branch
                )
                helper.enable()
            for batch in args.batches:
                got = guarded(partial(measure, pipe, batch, size, args.steps, args.repeats))
                rows.append(
                    {"model": name, "size": size, "variant": variant, "batch": batch, **got}
                )
                print(rows[-1], flush=True)
                save(name_out, result)
            if helper is not None:
                helper.disable()
        del pipe
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return result


def table(result: dict[str, Any]) -> str:
    m, s = result["machine"], result["settings"]
    head = (
        f"GPU figures on {m.get('gpu') or 'CPU (smoke run)'}, torch {m.get('torch')}, {m['date']}: "
        f"random-weight full-size architectures, SDPA; SD: fp16, guidance 7; FLUX.1 [schnell], "
        f"SD3.5 Medium, Z-Image-Turbo: bf16 (`fp8`: the transformer in torchao's fp8, as "
        f'`quantize = "fp8"`), their cards\' steps and guidance; '
        f"compiled engine: {s.get('compile_mode', 'max-autotune')}; cache: DeepCache interval "
        f"{s.get('cache_interval', 3)}, branch {s.get('cache_branch', 0)}."
    )
    rows = [
        [
            r["model"],
            f"{r['size']}x{r['size']}",
            r["variant"],
            r["batch"],
            r.get("steps", s["steps"]),
            r["images_per_s"],
            r.get("it_per_s", 0.0),
            r["s_per_image"],
            "OOM" if r["peak_gib"] < 0 else f"{r['peak_gib']:.1f}",
            f"{r['weights_gib']:.1f}" if "weights_gib" in r else "",
        ]
        for r in result["rows"]
    ]
    return (
        head
        + "\n\n"
        + markdown_table(
            [
                "model",
                "size",
                "variant",
                "batch",
                "steps",
                "images/s",
                "it/s",
                "s/image",
                "peak GiB",
                "weights GiB",
            ],
            rows,
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["sd15", "sdxl"], choices=list(SIZES))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument(
        "--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS + DIT_VARIANTS[1:]
    )
    parser.add_argument("--compile-mode", default="max-autotune", help="engine_compiled*")
    parser.add_argument("--cache-interval", type=int, default=3, help="DeepCache's interval")
    parser.add_argument("--cache-branch", type=int, default=0, help="DeepCache's branch")
    parser.add_argument("--out", default="gpu_bench", help="results name under bench/results/")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run to check the script")
    parser.add_argument(
        "--docs",
        "--readme",
        dest="readme",
        action="store_true",
        help="refresh its table on docs/benchmarks.md",
    )
    args = parser.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        sys.exit("gpu_bench needs CUDA; use --smoke on a machine without a GPU")
    result = run(args)
    text = table(result)
    print(text)
    print(f"wrote {save(f'{args.out}_smoke' if args.smoke else args.out, result)}")
    if args.readme and not args.smoke:
        update_docs("gpu_dit" if set(args.models) <= set(DIT_CALLS) else "gpu", text)


if __name__ == "__main__":
    main()
