"""Engine efficiency: images/s through the engine vs the same work as raw pipeline calls.

For each batch size B, the same N one-image requests run (a) as N/B raw `pipe(...)` calls on
the engine's own worker thread and pipeline, and (b) through `Engine.submit` with
`max_batch_size=B`, alternating a few rounds so drift hits both alike. Efficiency = engine /
raw (goal >= 0.95); speed-up = batched / sequential (B vs 1) through the engine.

    python -m bench.engine_bench [--model builtin:tiny] [--size 64] [--steps 4] [--docs]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from engine import Engine, EngineConfig, ImageRequest

from .report import machine, markdown_table, save, update_docs


async def raw_rate(engine: Engine, batch: int, total: int, size: int, steps: int) -> float:
    """Images/s of bare pipeline calls, B prompts and B generators per call, on the worker."""
    import torch

    guidance = engine.profile.default_guidance

    def work(pipe: Any) -> float:
        start = time.perf_counter()
        for call in range(total // batch):
            seeds = range(call * batch, call * batch + batch)
            pipe(
                prompt=[f"a robot painting {s}" for s in seeds],
                negative_prompt=[""] * batch,
                num_inference_steps=steps,
                guidance_scale=guidance,
                width=size,
                height=size,
                generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
                output_type="pil",
            )
        return total / (time.perf_counter() - start)

    return await engine.run_in_worker(work)


async def engine_rate(engine: Engine, total: int, size: int, steps: int) -> float:
    """Images/s of `total` one-image requests submitted at once (users interleaved)."""
    start = time.perf_counter()
    jobs = [
        engine.submit(
            engine.prepare(
                ImageRequest(
                    f"a robot painting {s}",
                    seed=s,
                    steps=steps,
                    width=size,
                    height=size,
                    user=f"user{s % 4}",
                )
            )
        )
        for s in range(total)
    ]
    for job in jobs:
        await job.result()
    return total / (time.perf_counter() - start)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rows = []
    for batch in args.batches:
        config = EngineConfig(
            model=args.model,
            max_batch_size=batch,
            max_count=1,
            batch_wait_ms=1000,
            max_queue=max(args.images, 64),
        )
        async with Engine(config) as engine:
            await engine_rate(engine, batch, args.size, args.steps)  # warm-up
            raws, engs = [], []
            for _ in range(args.rounds):
                raws.append(await raw_rate(engine, batch, args.images, args.size, args.steps))
                engs.append(await engine_rate(engine, args.images, args.size, args.steps))
            rows.append(
                {
                    "batch": batch,
                    "raw_images_per_s": statistics.median(raws),
                    "engine_images_per_s": statistics.median(engs),
                }
            )
        print(
            f"batch {batch}: raw {rows[-1]['raw_images_per_s']:.2f}/s, "
            f"engine {rows[-1]['engine_images_per_s']:.2f}/s",
            flush=True,
        )
    base = rows[0]["engine_images_per_s"]
    for row in rows:
        row["efficiency"] = row["engine_images_per_s"] / row["raw_images_per_s"]
        row["speedup_vs_batch_1"] = row["engine_images_per_s"] / base
    return {
        "benchmark": "engine_efficiency",
        "machine": machine(),
        "settings": {k: v for k, v in vars(args).items() if k != "readme"},
        "rows": rows,
    }


def table(result: dict[str, Any]) -> str:
    m, s = result["machine"], result["settings"]
    device = m.get("gpu") or f"CPU ({m['cores']} cores)"
    head = (
        f"Engine efficiency, {s['model']} at {s['size']}x{s['size']}, {s['steps']} steps, "
        f"{s['images']} images per round, median of {s['rounds']} rounds; {device}, "
        f"torch {m.get('torch')}, {m['date']}. Goal: efficiency >= 0.95 at every batch size."
    )
    rows = [
        [
            r["batch"],
            r["raw_images_per_s"],
            r["engine_images_per_s"],
            f"{r['efficiency']:.2f}" + ("" if r["efficiency"] >= 0.95 else " (missed)"),
            f"{r['speedup_vs_batch_1']:.2f}x",
        ]
        for r in result["rows"]
    ]
    return (
        head
        + "\n\n"
        + markdown_table(
            ["batch", "raw pipeline img/s", "engine img/s", "efficiency", "batched vs sequential"],
            rows,
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:tiny")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument(
        "--docs",
        "--readme",
        dest="readme",
        action="store_true",
        help="refresh its table on docs/benchmarks.md",
    )
    args = parser.parse_args()
    result = asyncio.run(run(args))
    text = table(result)
    print(text)
    print(f"wrote {save('engine_bench', result)}")
    if args.readme:
        update_docs("engine", text)


if __name__ == "__main__":
    main()
