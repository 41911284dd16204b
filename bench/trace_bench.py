"""Trace replay: batch-level vs step-level scheduling under Poisson arrivals of mixed requests.

Batch-level batching makes a request that arrives just after a batch started wait for the whole
batch; step-level batching admits it at the next denoising step. The same seeded trace (Poisson
arrivals, a 4/20/30-step mix, two sizes, several users) is replayed against an engine with
`scheduling="batch"` and one with `scheduling="step"` in one run, and each reports images/s and
the time from submit to images (p50/p95), overall, for the shortest requests, and by kind: a
share of the trace is image-to-image (`--image-share`, strength 0.6 from a picture of the
request's size) and upscales (`--upscale-share`: strength 0.35 at twice the drawn size), as the
Discord image loop sends them.

    python -m bench.trace_bench                # CPU: builtin:tiny, steps and rate scaled down
    python -m bench.trace_bench --gpu          # CUDA: full-size SD 1.5, random fp16 weights
    python -m bench.trace_bench --models 2     # what switching models costs (below)

With `--models 2` each request names one of two models (`builtin:tiny` and `builtin:tiny-b`,
drawn at random) and the trace is replayed three times in `--scheduling` mode: every request
on one model (the baseline), two models with both loaded, and two models with
`max_loaded_models = 1`, where a request for the other model waits while it loads.

On the CPU the tiny model's 4/20/30-step mix becomes 2/10/15 steps at 64x64 and 96x96, at about
60 % of one core's capacity, so the replay takes a few minutes.

Figures are ratios measured side by side; absolute times on a shared CPU are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math
import random
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine import Engine, EngineConfig, ImageRequest

from .plots import latency_plot
from .report import device, machine, markdown_table, save, settings_of, update_docs
from .stats import percentile

if TYPE_CHECKING:
    from PIL.Image import Image

MODES = ("batch", "step")


@dataclass(frozen=True, slots=True)
class Arrival:
    """One request of the trace, `at` seconds after the replay starts."""

    at: float
    user: str
    prompt: str
    seed: int
    steps: int
    width: int
    height: int
    count: int
    kind: str = "text"  # "text", "image" (image-to-image) or "upscale"
    strength: float | None = None
    model: str | None = None  # with --models: which configured model

    def request(self, picture: Image | None = None) -> ImageRequest:
        """The request to submit (`picture`: the start of an image-to-image kind)."""
        return ImageRequest(
            self.prompt,
            seed=self.seed,
            steps=self.steps,
            width=self.width,
            height=self.height,
            count=self.count,
            user=self.user,
            init_image=picture if self.strength else None,
            strength=self.strength,
            model=self.model,
        )


KINDS = ("text", "image", "upscale")
STRENGTHS = {"image": 0.6, "upscale": 0.35}


def make_trace(args: argparse.Namespace) -> list[Arrival]:
    """A seeded trace: exponential gaps at `rate`/s, steps and sizes drawn from the mixes."""
    rng = random.Random(args.seed)
    kinds = random.Random(args.seed + 1)  # its own stream: the text mix stays as it was
    models = random.Random(args.seed + 2)
    at = 0.0
    trace = []
    for n in range(args.requests):
        at += rng.expovariate(args.rate)
        width, height = rng.choices(args.sizes, weights=args.size_weights)[0]
        arrival = Arrival(
            at=round(at, 4),
            user=f"user{rng.randrange(args.users)}",
            prompt=f"trace request {n}",
            seed=rng.randrange(2**32),
            steps=rng.choice(args.steps),
            width=width,
            height=height,
            count=2 if rng.random() < args.two_image_share else 1,
        )
        draw = kinds.random()
        if draw < args.upscale_share:
            arrival = dataclasses.replace(
                arrival, kind="upscale", width=2 * width, height=2 * height, count=1
            )
        elif draw < args.upscale_share + args.image_share:
            arrival = dataclasses.replace(arrival, kind="image")
        if arrival.kind != "text":  # at least one step to run, as engine/derived.py does
            strength = STRENGTHS[arrival.kind]
            steps = max(arrival.steps, math.ceil(1 / strength - 1e-9))
            arrival = dataclasses.replace(arrival, strength=strength, steps=steps)
        if args.models > 1:
            arrival = dataclasses.replace(arrival, model=f"m{models.randrange(args.models)}")
        trace.append(arrival)
    return trace


def picture(width: int, height: int) -> Any:
    """A fixed noise picture to start image-to-image requests from."""
    from PIL import Image

    return Image.effect_noise((width, height), 64).convert("RGB")


async def replay(config: EngineConfig, trace: list[Arrival]) -> dict[str, Any]:
    """Submit the trace on schedule and time every request from submit to images."""
    async with Engine(config) as engine:
        if engine.scheduling != config.scheduling:
            raise SystemExit(f"{config.model} cannot run step-level; nothing to compare")
        # Warm-up, one request per size, so first-call costs count for neither engine.
        for width, height in sorted({(a.width, a.height) for a in trace}):
            await engine.generate(ImageRequest("warm-up", steps=2, width=width, height=height))
        pictures = {
            (a.width, a.height): picture(a.width, a.height) for a in trace if a.kind != "text"
        }
        base = (engine.stats.images, engine.stats.calls, engine.stats.call_images)
        loads = engine.model_loads
        loop = asyncio.get_running_loop()
        start = loop.time()

        async def one(a: Arrival) -> tuple[float, float]:
            # Sleeping is the trace's schedule here, not a wait for an event.
            await asyncio.sleep(max(0.0, start + a.at - loop.time()))
            submitted = loop.time()
            job = engine.submit(engine.prepare(a.request(pictures.get((a.width, a.height)))))
            await job.result()
            done = loop.time()
            return done - submitted, done - start

        outcomes = await asyncio.gather(*(one(a) for a in trace))
        stats = engine.stats
        images = stats.images - base[0]
        calls = stats.calls - base[1]
        call_images = stats.call_images - base[2]
        loads = engine.model_loads - loads
    latencies = [latency for latency, _ in outcomes]
    makespan = max(end for _, end in outcomes)
    shortest = min(a.steps for a in trace)
    short = [lat for (lat, _), a in zip(outcomes, trace, strict=True) if a.steps == shortest]
    by_kind: dict[str, float] = {}
    for kind in KINDS:
        mine = [lat for (lat, _), a in zip(outcomes, trace, strict=True) if a.kind == kind]
        if mine:
            by_kind[f"{kind}_n"] = len(mine)
            by_kind[f"{kind}_p50_s"] = percentile(mine, 50)
            by_kind[f"{kind}_p95_s"] = percentile(mine, 95)
    return {
        **by_kind,
        "images": images,
        "makespan_s": makespan,
        "images_per_s": images / makespan,
        "p50_s": percentile(latencies, 50),
        "p95_s": percentile(latencies, 95),
        "short_steps": shortest,
        "short_p50_s": percentile(short, 50),
        "short_p95_s": percentile(short, 95),
        "unet_calls": calls,  # pipeline calls (batch) or ticks (step)
        "images_per_call": call_images / calls if calls else 0.0,
        "model_loads": loads,
        "latencies_s": latencies,
    }


def build_gpu_model(folder: Path) -> None:
    """Save a full-size SD 1.5 architecture with random fp16 weights (no download)."""
    import torch

    from .architectures import build

    pipe = build("sd15", device="cuda", dtype=torch.float16)
    pipe.save_pretrained(folder)
    del pipe
    torch.cuda.empty_cache()


def models_config(args: argparse.Namespace) -> EngineConfig:
    """`--models`: the tiny models' engine at the trace's sizes, in `--scheduling` mode."""
    return dataclasses.replace(
        engine_config(args, "builtin:tiny", make_trace(args)), scheduling=args.scheduling
    )


def engine_config(args: argparse.Namespace, model: str, trace: list[Arrival]) -> EngineConfig:
    return EngineConfig(
        model=model,
        device="cuda" if args.gpu else "auto",
        dtype="float16" if args.gpu else "auto",
        scheduler=args.scheduler,
        safety_checker=False,
        cache_dir=args.cache_dir,
        max_batch_size=args.max_batch_size,
        batch_wait_ms=args.batch_wait_ms,
        max_queue=max(64, len(trace)),
        max_count=2,
        max_width=max(a.width for a in trace),
        max_height=max(a.height for a in trace),
    )


async def run(args: argparse.Namespace, model: str) -> dict[str, Any]:
    trace = make_trace(args)
    base = engine_config(args, model, trace)
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    for repeat in range(args.repeats):
        # Alternate the order so drift on a shared machine hits both engines alike.
        for mode in MODES if repeat % 2 == 0 else MODES[::-1]:
            t0 = time.perf_counter()
            config = dataclasses.replace(base, scheduling=mode)
            result = await replay(config, trace)
            runs[mode].append(result)
            print(
                f"[{repeat + 1}/{args.repeats}] {mode:5}: {result['images_per_s']:.2f} images/s, "
                f"p50 {result['p50_s']:.2f} s, p95 {result['p95_s']:.2f} s "
                f"({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    engines = {mode: summarize(results) for mode, results in runs.items()}
    keys = ("images_per_s", "p50_s", "p95_s", "short_p50_s", "short_p95_s")
    ratio = {k: engines["step"][k] / engines["batch"][k] for k in keys}
    settings = settings_of(args, "out")
    return {
        "benchmark": "trace",
        "machine": machine(),
        "model": "sd15 architecture, random fp16 weights" if args.gpu else model,
        "settings": settings,
        "trace": {
            "requests": len(trace),
            "images": sum(a.count for a in trace),
            "duration_s": trace[-1].at,
            "arrivals": [asdict(a) for a in trace],
        },
        "engines": engines,
        "runs": runs,
        "ratio_step_over_batch": ratio,
    }


#: `--models`: the models requests are spread over (same shape, different random weights).
MIXED_SOURCES = ("builtin:tiny", "builtin:tiny-b")


async def run_models(args: argparse.Namespace, base: EngineConfig) -> dict[str, Any]:
    """The same mixed-model trace on one model, on N models all loaded, and on N models with
    one loaded at a time: what switching costs."""
    from engine import ModelSpec

    trace = make_trace(args)
    specs = tuple(
        ModelSpec(f"m{n}", MIXED_SOURCES[n % len(MIXED_SOURCES)]) for n in range(args.models)
    )
    one = [dataclasses.replace(a, model=None) for a in trace]
    setups = {
        "one model": (dataclasses.replace(base, models=specs[:1]), one),
        f"{args.models} models, all loaded": (
            dataclasses.replace(base, models=specs, max_loaded_models=args.models),
            trace,
        ),
        f"{args.models} models, 1 loaded": (
            dataclasses.replace(base, models=specs, max_loaded_models=1),
            trace,
        ),
    }
    runs: dict[str, dict[str, Any]] = {}
    for name, (config, arrivals) in setups.items():
        t0 = time.perf_counter()
        runs[name] = await replay(config, arrivals)
        r = runs[name]
        print(
            f"{name}: {r['images_per_s']:.2f} images/s, p50 {r['p50_s']:.2f} s, "
            f"p95 {r['p95_s']:.2f} s, {r['model_loads']} model loads "
            f"({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    baseline = runs["one model"]
    settings = settings_of(args, "out")
    return {
        "benchmark": "trace_models",
        "machine": machine(),
        "settings": settings,
        "trace": {"requests": len(trace), "images": sum(a.count for a in trace)},
        "runs": runs,
        "ratio_over_one_model": {
            name: {k: r[k] / baseline[k] for k in ("images_per_s", "p50_s", "p95_s")}
            for name, r in runs.items()
        },
    }


def models_table(result: dict[str, Any]) -> str:
    s, m, t = result["settings"], result["machine"], result["trace"]
    head = (
        f"Model switching on {device(m)}, torch {m.get('torch')}, {m['date']}: {t['requests']} "
        f"requests ({t['images']} images) spread over {s['models']} tiny models, Poisson "
        f"{s['rate']}/s, steps {s['steps']}, {s['scheduling']}-level scheduling."
    )
    rows = []
    for name, r in result["runs"].items():
        x = result["ratio_over_one_model"][name]
        rows.append(
            [
                name,
                f"{r['images_per_s']:.3g} ({x['images_per_s']:.2f}x)",
                f"{r['p50_s']:.3g} / {r['p95_s']:.3g} ({x['p50_s']:.2f}x / {x['p95_s']:.2f}x)",
                f"{r['model_loads']}",
                f"{r['unet_calls']} ({r['images_per_call']:.2f})",
            ]
        )
    headers = [
        "setup",
        "images/s (vs one model)",
        "p50 / p95 submit to image, s (vs one model)",
        "model loads",
        "calls (images per call)",
    ]
    return head + "\n\n" + markdown_table(headers, rows)


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Median over repeats of every figure (one repeat: that run's figures)."""
    figures = [k for k, v in results[0].items() if isinstance(v, int | float)]
    return {k: statistics.median(r[k] for r in results) for k in figures}


def table(result: dict[str, Any]) -> str:
    s, m, t = result["settings"], result["machine"], result["trace"]
    head = (
        f"Trace replay on {device(m)}, torch {m.get('torch')}, {m['date']}: {result['model']}, "
        f"{t['requests']} requests ({t['images']} images) over {t['duration_s']:.0f} s, Poisson "
        f"{s['rate']}/s, steps {s['steps']}, sizes {[f'{w}x{h}' for w, h in s['sizes']]}, "
        f"{s['users']} users, {s['scheduler']}, max {s['max_batch_size']} images per UNet call, "
        f"median of {s['repeats']} run(s) each."
    )
    e, r = result["engines"], result["ratio_step_over_batch"]
    short = f"p50 / p95, {e['batch']['short_steps']:.0f}-step requests (s)"
    rows: list[list[Any]] = []
    for mode in MODES:
        x = e[mode]
        rows.append(
            [
                f"{mode}-level",
                f"{x['images_per_s']:.3g}",
                f"{x['p50_s']:.3g} / {x['p95_s']:.3g}",
                f"{x['short_p50_s']:.3g} / {x['short_p95_s']:.3g}",
                f"{x['unet_calls']:.0f} ({x['images_per_call']:.2f})",
            ]
        )
    rows.append(
        [
            "step / batch",
            f"{r['images_per_s']:.2f}x",
            f"{r['p50_s']:.2f}x / {r['p95_s']:.2f}x",
            f"{r['short_p50_s']:.2f}x / {r['short_p95_s']:.2f}x",
            "",
        ]
    )
    headers = [
        "engine",
        "images/s",
        "p50 / p95 submit to image (s)",
        short,
        "calls (images per call)",
    ]
    kinds = []
    for kind in KINDS:
        if f"{kind}_p50_s" in e["batch"]:
            b, st = e["batch"], e["step"]
            kinds.append(
                f"{kind} (n={b[f'{kind}_n']:.0f}) {b[f'{kind}_p50_s']:.3g} / "
                f"{st[f'{kind}_p50_s']:.3g} s and {b[f'{kind}_p95_s']:.3g} / "
                f"{st[f'{kind}_p95_s']:.3g} s"
            )
    note = "\n\np50 and p95 submit to image by kind, batch / step: " + "; ".join(kinds) + "."
    return head + "\n\n" + markdown_table(headers, rows) + (note if kinds else "")


def parse_size(text: str) -> tuple[int, int]:
    width, _, height = text.partition("x")
    return int(width), int(height or width)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="full-size SD 1.5 on CUDA, fp16")
    parser.add_argument("--requests", type=int, help="default: 40 (CPU), 300 (GPU)")
    parser.add_argument("--rate", type=float, help="arrivals per second; default 0.5 / 3.0")
    parser.add_argument("--steps", type=int, nargs="+", help="step mix; default 2 10 15 / 4 20 30")
    parser.add_argument("--sizes", type=parse_size, nargs="+", help="default 64 96 / 512 512x768")
    parser.add_argument("--size-weights", type=float, nargs="+", default=[0.7, 0.3])
    parser.add_argument("--users", type=int, default=6)
    parser.add_argument("--two-image-share", type=float, default=0.2)
    parser.add_argument("--image-share", type=float, default=0.15, help="image-to-image share")
    parser.add_argument("--upscale-share", type=float, default=0.1, help="upscale share")
    parser.add_argument("--scheduler", default="ddim")
    parser.add_argument("--max-batch-size", type=int, help="images per UNet call; 8 / 16")
    parser.add_argument("--batch-wait-ms", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads; 1 keeps CPU timings stable on a shared machine, 0: torch's",
    )
    parser.add_argument("--cache-dir", type=Path, help="where builtin:tiny is built")
    parser.add_argument(
        "--model",
        default="builtin:tiny",
        help="the CPU model (e.g. builtin:tiny-flux-dev: a FLUX-family transformer)",
    )
    parser.add_argument("--out", default=None, help="results name under bench/results/")
    parser.add_argument(
        "--docs",
        "--readme",
        dest="readme",
        action="store_true",
        help="refresh its table on docs/benchmarks.md",
    )
    parser.add_argument("--models", type=int, default=1, help="spread requests over N models")
    parser.add_argument("--scheduling", default="batch", choices=MODES, help="with --models")
    args = parser.parse_args()
    gpu = args.gpu
    args.requests = args.requests or (300 if gpu else 40)
    args.rate = args.rate or (3.0 if gpu else 0.5)
    args.steps = args.steps or ([4, 20, 30] if gpu else [2, 10, 15])
    args.sizes = args.sizes or ([(512, 512), (512, 768)] if gpu else [(64, 64), (96, 96)])
    args.max_batch_size = args.max_batch_size or (16 if gpu else 8)
    if len(args.size_weights) != len(args.sizes):
        parser.error("--size-weights needs one weight per size")

    import torch

    if args.threads and not gpu:
        torch.set_num_threads(args.threads)
    if gpu and not torch.cuda.is_available():
        sys.exit("trace_bench --gpu needs a CUDA GPU (torch.cuda.is_available() is False)")
    if args.model != "builtin:tiny" and args.scheduler == "ddim":
        args.scheduler = "default"  # other families keep their own (flow-matching) scheduler
    with tempfile.TemporaryDirectory(prefix="trace-bench-") as tmp:
        model = args.model
        if gpu:
            print("building a random-weight SD 1.5 pipeline (fp16)...", flush=True)
            build_gpu_model(Path(tmp))
            model = tmp
        if args.models > 1:
            if gpu:
                sys.exit("--models runs on the CPU's tiny models only")
            result = asyncio.run(run_models(args, models_config(args)))
            text = models_table(result)
            print(text)
            print(f"wrote {save(args.out or 'trace_models', result)}")
            if args.readme:
                update_docs("trace_models", text, latency_plot(result, "trace_models"))
            return
        result = asyncio.run(run(args, model))
    text = table(result)
    print(text)
    name = "trace_gpu" if gpu else "trace" if model == "builtin:tiny" else "trace_dit"
    print(f"wrote {save(args.out or name.replace('trace', 'trace_bench'), result)}")
    if args.readme:
        update_docs(name, text, latency_plot(result, name))


if __name__ == "__main__":
    main()
