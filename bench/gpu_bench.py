"""GPU figures: full-size SD 1.5 (512x512) and SDXL (1024x1024) architectures, random weights,
fp16, SDPA, 25 steps: images/s, seconds per image and peak GPU memory at each batch size,
plain and with channels-last and `torch.compile` on the UNet.

Needs CUDA (run it on a GPU machine; tests never do). `--smoke` runs scaled-down models on the
CPU for a few seconds, only to check the script itself.

    python -m bench.gpu_bench [--models sd15 sdxl] [--batches 1 2 4 8 16] [--readme]
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import torch

from .architectures import build
from .report import machine, markdown_table, save, update_readme

SIZES = {"sd15": 512, "sdxl": 1024}


def measure(pipe: Any, batch: int, size: int, steps: int, repeats: int) -> dict[str, float]:
    def call() -> None:
        pipe(
            prompt=["a robot painting with water colours"] * batch,
            num_inference_steps=steps,
            guidance_scale=7.0,
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
    return {
        "images_per_s": batch / seconds,
        "s_per_image": seconds / batch,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = "cpu" if args.smoke else "cuda"
    dtype = torch.float32 if args.smoke else torch.float16
    rows = []
    for name in args.models:
        size = 64 if args.smoke else SIZES[name]
        pipe = build(name, device=device, dtype=dtype, scale=0.1 if args.smoke else 1.0)
        for variant in args.variants:
            if variant == "channels_last":
                pipe.unet.to(memory_format=torch.channels_last)
            if variant == "compile":
                pipe.unet = torch.compile(pipe.unet)
            for batch in args.batches:
                try:
                    figures = measure(pipe, batch, size, args.steps, args.repeats)
                except torch.cuda.OutOfMemoryError:
                    figures = {"images_per_s": 0.0, "s_per_image": 0.0, "peak_gib": -1.0}
                    torch.cuda.empty_cache()
                rows.append(
                    {"model": name, "size": size, "variant": variant, "batch": batch, **figures}
                )
                print(rows[-1], flush=True)
        del pipe
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return {"benchmark": "gpu", "machine": machine(), "settings": vars(args), "rows": rows}


def table(result: dict[str, Any]) -> str:
    m, s = result["machine"], result["settings"]
    head = (
        f"GPU figures on {m.get('gpu') or 'CPU (smoke run)'}, torch {m.get('torch')}, {m['date']}: "
        f"random-weight full-size architectures, fp16, SDPA, {s['steps']} steps, guidance 7."
    )
    rows = [
        [
            r["model"],
            f"{r['size']}x{r['size']}",
            r["variant"],
            r["batch"],
            r["images_per_s"],
            r["s_per_image"],
            "OOM" if r["peak_gib"] < 0 else f"{r['peak_gib']:.1f}",
        ]
        for r in result["rows"]
    ]
    return (
        head
        + "\n\n"
        + markdown_table(
            ["model", "size", "variant", "batch", "images/s", "s/image", "peak GiB"], rows
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["sd15", "sdxl"], choices=list(SIZES))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["plain", "channels_last", "compile"],
        choices=["plain", "channels_last", "compile"],
    )
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run to check the script")
    parser.add_argument("--readme", action="store_true")
    args = parser.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        sys.exit("gpu_bench needs CUDA; use --smoke on a machine without a GPU")
    result = run(args)
    text = table(result)
    print(text)
    print(f"wrote {save('gpu_bench_smoke' if args.smoke else 'gpu_bench', result)}")
    if args.readme and not args.smoke:
        update_readme("gpu", text)


if __name__ == "__main__":
    main()
