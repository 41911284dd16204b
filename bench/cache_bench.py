"""Step caching (`[models.<name>] cache`): what it costs in image quality and what it buys in
speed, on the CPU's tiny models, cached against uncached in one run.

Quality: the same requests made alone without and with the cache, each cached image compared
with its uncached one (PSNR, and SSIM as the similarity: no CLIP weights can be downloaded
here). The tiny models have random weights, so the figures say how far the cache moves their
images, not how a trained model's pictures look.

Speed: the CPU trace of `trace_bench` (Poisson arrivals of text, image-to-image and upscale
requests at mixed steps and sizes) replayed against the same step-level engine without and
with DeepCache on every request (`cache_for = "all"`), and the same requests arriving at once
(a burst: the engine's capacity in images/s).

    python -m bench.cache_bench [--docs]       # both parts, a few minutes on the CPU
    python -m bench.cache_bench --part quality
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from engine import EngineConfig, ImageRequest, ModelSpec

from .report import device, machine, markdown_table, save, update_docs
from .trace_bench import Arrival, engine_config, make_trace, replay, summarize

#: The quality settings measured: (model, label, its `[models]` cache keys).
SETTINGS: list[tuple[str, str, dict[str, Any]]] = [
    ("builtin:tiny", "deepcache interval 2", {"cache": "deepcache", "cache_interval": 2}),
    ("builtin:tiny", "deepcache interval 3", {"cache": "deepcache", "cache_interval": 3}),
    ("builtin:tiny", "deepcache interval 5", {"cache": "deepcache", "cache_interval": 5}),
    (
        "builtin:tiny",
        "deepcache interval 3, branch 3",
        {"cache": "deepcache", "cache_interval": 3, "cache_branch": 3},
    ),
    ("builtin:tiny-flux-dev", "fbcache 0.25", {"cache": "fbcache", "cache_threshold": 0.25}),
    ("builtin:tiny-flux-dev", "fbcache 0.3", {"cache": "fbcache", "cache_threshold": 0.3}),
    ("builtin:tiny-flux-dev", "fbcache 0.4", {"cache": "fbcache", "cache_threshold": 0.4}),
]


def psnr(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """Peak signal-to-noise ratio of two images in [0, 1], in dB (inf when equal)."""
    mse = float(((ours - theirs) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def ssim(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """Structural similarity of two (H, W, C) images in [0, 1]: Wang et al.'s, an 11-pixel
    Gaussian window of sigma 1.5 per channel, averaged over the image (1.0 when equal)."""
    x, y = (t.permute(2, 0, 1).unsqueeze(0).double() for t in (ours, theirs))
    channels = x.shape[1]
    grid = torch.arange(11, dtype=torch.float64) - 5
    bell = torch.exp(-(grid**2) / (2 * 1.5**2))
    window = (bell[:, None] * bell[None, :]) / bell.sum() ** 2
    kernel = window.expand(channels, 1, 11, 11)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(t, kernel, groups=channels)

    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    value = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(value.mean())


def quality(args: argparse.Namespace, cache_dir: Path) -> list[dict[str, Any]]:
    """Each setting's cached images against the uncached ones of the same requests, alone."""
    from engine.job import Slot
    from engine.loader import load_model
    from engine.stepper import Stepper

    def alone(stepper: Stepper, request: ImageRequest) -> tuple[torch.Tensor, Any]:
        slot = Slot(request, lambda i, n: None, lambda png: None, lambda: False, lambda: False)
        sample = stepper.admit(slot)
        while not sample.done:
            stepper.tick([sample])
        return torch.from_numpy(sample.output.images), sample.cache

    rows = []
    for source, label, keys in SETTINGS:
        spec = ModelSpec("m", source, **keys)
        config = EngineConfig(model=source, cache_dir=cache_dir, models=(spec,))
        stepper = Stepper(load_model(config))
        guidance = 3.5 if "flux" in source else 7.0
        scores: list[tuple[float, float]] = []
        reused = calls = 0
        started = time.perf_counter()
        for n in range(args.prompts):
            request = ImageRequest(
                f"quality prompt {n}",
                seed=1000 + n,
                steps=args.quality_steps,
                guidance=guidance,
                width=64,
                height=64,
                count=2,
            )
            plain, _ = alone(stepper, request)
            cached, state = alone(stepper, dataclasses.replace(request, fast=True))
            reused += state.reused
            calls += state.reused + state.computed
            scores += [(psnr(a, b), ssim(a, b)) for a, b in zip(cached, plain, strict=True)]
        finite = [p for p, _ in scores if math.isfinite(p)]
        rows.append(
            {
                "model": source,
                "setting": label,
                "images": len(scores),
                "steps": args.quality_steps,
                "reused_share": reused / calls if calls else 0.0,
                "psnr_db_mean": sum(finite) / len(finite) if finite else math.inf,
                "psnr_db_min": min(finite) if finite else math.inf,
                "ssim_mean": sum(s for _, s in scores) / len(scores),
                "ssim_min": min(s for _, s in scores),
            }
        )
        print(rows[-1] | {"seconds": round(time.perf_counter() - started, 1)}, flush=True)
    return rows


def trace_args(args: argparse.Namespace, rate: float) -> argparse.Namespace:
    """`trace_bench`'s CPU trace settings (its defaults), at `rate` arrivals per second."""
    return argparse.Namespace(
        seed=args.seed,
        requests=args.requests,
        rate=rate,
        sizes=[(64, 64), (96, 96)],
        size_weights=[0.7, 0.3],
        users=6,
        steps=[2, 10, 15],
        two_image_share=0.2,
        image_share=0.15,
        upscale_share=0.1,
        models=1,
        gpu=False,
        scheduler="ddim",
        cache_dir=args.cache_dir,
        max_batch_size=8,
        batch_wait_ms=50,
    )


async def speed(args: argparse.Namespace) -> dict[str, Any]:
    """The trace and the burst, each without and with the cache, step-level scheduling."""
    out: dict[str, Any] = {}
    for scenario, rate in (("trace", args.rate), ("burst", 1000.0)):
        targs = trace_args(args, rate)
        trace: list[Arrival] = make_trace(targs)
        base = dataclasses.replace(
            engine_config(targs, "builtin:tiny", trace), scheduling=args.scheduling
        )
        runs: dict[str, list[dict[str, Any]]] = {"uncached": [], "cached": []}
        for repeat in range(args.repeats):
            order = ["uncached", "cached"] if repeat % 2 == 0 else ["cached", "uncached"]
            for mode in order:
                keys = {"cache": "deepcache", "cache_for": "all"} if mode == "cached" else {}
                keys |= {"cache_interval": args.interval, "cache_branch": args.branch}
                spec = ModelSpec("tiny", "builtin:tiny", scheduler="ddim", **keys)
                config = dataclasses.replace(base, models=(spec,))
                started = time.perf_counter()
                result = await replay(config, trace)
                runs[mode].append(result)
                print(
                    f"{scenario} {mode:8}: {result['images_per_s']:.3f} images/s, p50 "
                    f"{result['p50_s']:.2f} s, p95 {result['p95_s']:.2f} s "
                    f"({time.perf_counter() - started:.0f} s)",
                    flush=True,
                )
        engines = {mode: summarize(results) for mode, results in runs.items()}
        keys = ("images_per_s", "p50_s", "p95_s")
        out[scenario] = {
            "rate": rate,
            "engines": engines,
            "ratio_cached_over_uncached": {
                k: engines["cached"][k] / engines["uncached"][k] for k in keys
            },
        }
    return out


def table(result: dict[str, Any]) -> str:
    m, s = result["machine"], result["settings"]
    parts = []
    if result.get("quality"):
        head = (
            f"Step caching's quality cost on {device(m)}, torch {m.get('torch')}, {m['date']}: "
            f"{s['prompts']} prompts x 2 images per setting, {s['quality_steps']} steps, 64x64, "
            "each cached image against the same request uncached (random-weight tiny models)."
        )
        rows = [
            [
                r["model"].removeprefix("builtin:"),
                r["setting"],
                f"{r['reused_share']:.0%}",
                f"{r['psnr_db_mean']:.1f} / {r['psnr_db_min']:.1f}",
                f"{r['ssim_mean']:.4f} / {r['ssim_min']:.4f}",
            ]
            for r in result["quality"]
        ]
        headers = ["model", "setting", "calls reused", "PSNR dB mean / min", "SSIM mean / min"]
        parts.append(head + "\n\n" + markdown_table(headers, rows))
    if result.get("speed"):
        head = (
            f"Step caching's speed on {device(m)}: the CPU trace of the scheduling benchmark "
            f"({s['requests']} requests: text, image-to-image and upscales; steps 2/10/15; "
            f"64x64 and 96x96; Poisson {s['rate']}/s) and the same requests all at once (burst), "
            f"{s['scheduling']}-level scheduling, DeepCache interval {s['interval']} branch "
            f"{s['branch']} on every request against none, median of {s['repeats']} run(s)."
        )
        rows = []
        for scenario, block in result["speed"].items():
            e, r = block["engines"], block["ratio_cached_over_uncached"]
            for mode in ("uncached", "cached"):
                x = e[mode]
                rows.append(
                    [
                        scenario,
                        mode,
                        f"{x['images_per_s']:.3g}",
                        f"{x['p50_s']:.3g} / {x['p95_s']:.3g}",
                    ]
                )
            rows.append(
                [
                    scenario,
                    "cached / uncached",
                    f"{r['images_per_s']:.2f}x",
                    f"{r['p50_s']:.2f}x / {r['p95_s']:.2f}x",
                ]
            )
        headers = ["load", "engine", "images/s", "p50 / p95 submit to image (s)"]
        parts.append(head + "\n\n" + markdown_table(headers, rows))
    return "\n\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["all", "quality", "speed"], default="all")
    parser.add_argument("--prompts", type=int, default=4, help="quality: requests per setting")
    parser.add_argument("--quality-steps", type=int, default=20)
    parser.add_argument("--requests", type=int, default=40, help="speed: the trace's requests")
    parser.add_argument("--rate", type=float, default=0.5, help="speed: arrivals per second")
    parser.add_argument("--interval", type=int, default=3, help="speed: DeepCache's interval")
    parser.add_argument("--branch", type=int, default=0, help="speed: DeepCache's branch")
    parser.add_argument("--scheduling", default="step", choices=["step", "batch"])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's)")
    parser.add_argument("--cache-dir", type=Path, help="where the tiny models are built")
    parser.add_argument("--docs", action="store_true", help="refresh its block on the docs")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result: dict[str, Any] = {
        "benchmark": "cache",
        "machine": machine(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    with tempfile.TemporaryDirectory(prefix="cache-bench-") as tmp:
        if args.cache_dir is None:
            args.cache_dir = Path(tmp)
        if args.part in ("all", "quality"):
            result["quality"] = quality(args, args.cache_dir)
        if args.part in ("all", "speed"):
            result["speed"] = asyncio.run(speed(args))
    text = table(result)
    print(text)
    print(f"wrote {save('cache_bench', result)}")
    if args.docs:
        update_docs("cache", text)


if __name__ == "__main__":
    main()
