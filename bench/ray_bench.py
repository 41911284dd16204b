"""Ray Serve replicas vs the local engine: one seeded trace, three engines, side by side.

Issue 14 asks what the Ray backend (`engine.cluster.RayEngine`) buys and costs on one machine:
the same trace is replayed against (a) the local `Engine` in this process, (b) `RayEngine`
with one replica and (c) `RayEngine` with two, each replica a local `Engine` on one torch
thread (`OMP_NUM_THREADS=1`, inherited by the Ray workers; `num_cpus=1` each, so two fit on
two cores). Each reports images/s and the time from submit to images (p50/p95); the ratios
are 2-replica over 1-replica throughput (goal: at least 1.8x) and the 1-replica Ray p50 over
the local p50 (goal: at most 10 % added).

    OMP_NUM_THREADS=1 python -m bench.ray_bench            # about 5 minutes on 2 cores
    OMP_NUM_THREADS=1 python -m bench.ray_bench --smoke    # a tiny run to check the script

The trace is `bench.trace_bench`'s (seeded Poisson arrivals, steps 2/10/15, 64x64 and 96x96,
a fifth of the requests for two images), text-to-image only, at 2 arrivals/s: about three
times what one single-threaded replica serves (~1.5 s of work per request) and half again
what two serve, so every engine has a queue for most of the replay and images/s measures its
capacity, not the arrival rate; a second replica can only help when there is work waiting for
it. Under such a queue the p50 is mostly waiting, so a small per-request cost of the Ray path
shows up scaled by the queue; the first `--idle` requests of the trace are therefore also
run one at a time before the replay (nothing queued), which is the Ray path's own latency.

Everything runs on the same cores: the driver (this process: the bot's side of `RayEngine`),
Ray's daemons and Serve's controller compete with the replicas, so two replicas on two cores
can at best approach 2x. CPU seconds per role (driver, replicas, Ray and Serve, anything else
on the machine) are recorded for each replay to show where the time went. One Ray cluster,
started here, serves (b) and (c); (b)'s application is deleted before (c) deploys.

Figures are measured side by side in one run; absolute times on a shared CPU are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from engine import Engine, ImageRequest
from engine.cluster import AnyEngine, RayConfig, RayEngine

from .report import machine, markdown_table, save, update_readme
from .trace_bench import Arrival, engine_config, make_trace, parse_size, percentile

#: The three engines, in the order they run.
SETUPS = ("local", "ray x1", "ray x2")
GOAL_SCALING = 1.8  # 2-replica over 1-replica throughput
GOAL_ADDED_P50 = 0.10  # Ray 1 replica over local, p50 submit to image


def request_of(a: Arrival) -> ImageRequest:
    return ImageRequest(
        a.prompt,
        seed=a.seed,
        steps=a.steps,
        width=a.width,
        height=a.height,
        count=a.count,
        user=a.user,
    )


async def warm_up(engine: AnyEngine, trace: list[Arrival], per_size: int) -> None:
    """First-call costs out of the way: `per_size` concurrent requests at each size (two
    per replica, so Serve's router reaches every replica)."""
    sizes = sorted({(a.width, a.height) for a in trace})
    await asyncio.gather(
        *(
            engine.generate(ImageRequest("warm-up", seed=n, steps=2, width=w, height=h))
            for w, h in sizes
            for n in range(per_size)
        )
    )


async def one_at_a_time(engine: AnyEngine, arrivals: list[Arrival]) -> list[float]:
    """Submit to image for each request alone: the path's latency with nothing queued."""
    out = []
    for a in arrivals:
        t0 = time.perf_counter()
        await engine.generate(request_of(a))
        out.append(time.perf_counter() - t0)
    return out


async def replay(engine: AnyEngine, trace: list[Arrival]) -> dict[str, Any]:
    """Submit the trace on schedule; images/s over the makespan, and submit-to-image times."""
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def one(a: Arrival) -> tuple[int, float, float]:
        # Sleeping is the trace's schedule here, not a wait for an event.
        await asyncio.sleep(max(0.0, start + a.at - loop.time()))
        submitted = loop.time()
        result = await engine.submit(request_of(a)).result()
        done = loop.time()
        return len(result.images), done - submitted, done - start

    outcomes = await asyncio.gather(*(one(a) for a in trace))
    images = sum(n for n, _, _ in outcomes)
    latencies = [lat for _, lat, _ in outcomes]
    makespan = max(end for _, _, end in outcomes)
    return {
        "images": images,
        "makespan_s": makespan,
        "images_per_s": images / makespan,
        "p50_s": percentile(latencies, 50),
        "p95_s": percentile(latencies, 95),
        "latencies_s": latencies,
    }


# Where the CPU time goes
def _role(pid: int, cmdline: list[str]) -> str:
    line = " ".join(cmdline)
    if pid == os.getpid():
        return "driver"
    if "ServeReplica" in line:
        return "replicas"
    if "ray" in line.lower():  # gcs_server, raylet, ServeController, idle workers, agents
        return "ray_and_serve"
    return "other"


def cpu_snapshot() -> dict[str, Any]:
    """Busy CPU seconds of the whole machine and of each process, by pid (psutil comes with
    Ray; without it nothing is recorded)."""
    try:
        import psutil
    except ImportError:
        return {}
    t = psutil.cpu_times()
    procs: dict[int, tuple[str, float]] = {}
    for p in psutil.process_iter(["pid", "cmdline", "cpu_times"]):
        times, cmdline = p.info["cpu_times"], p.info["cmdline"]
        if times is not None:
            procs[p.info["pid"]] = (_role(p.info["pid"], cmdline or []), times.user + times.system)
    return {"busy": t.user + t.nice + t.system + t.irq + t.softirq, "procs": procs}


def cpu_spent(before: dict[str, Any], after: dict[str, Any], wall: float) -> dict[str, float]:
    """CPU seconds by role between two snapshots; "other" is the machine's busy time that no
    role's process accounts for (other work on the machine, processes that ended)."""
    if not before or not after:
        return {}
    out = dict.fromkeys(("driver", "replicas", "ray_and_serve"), 0.0)
    for pid, (role, seconds) in after["procs"].items():
        if role != "other":
            out[role] += seconds - before["procs"].get(pid, (role, 0.0))[1]
    out["other"] = max(0.0, after["busy"] - before["busy"] - sum(out.values()))
    out["wall_s"] = wall
    return out


async def measure(
    name: str, engine: AnyEngine, trace: list[Arrival], args: argparse.Namespace, replicas: int
) -> dict[str, Any]:
    """Warm up, run the idle requests one at a time, then replay the trace."""
    t0 = time.perf_counter()
    await warm_up(engine, trace, per_size=2 * replicas)
    idle = await one_at_a_time(engine, trace[: args.idle])
    load = os.getloadavg()[0]
    before, t1 = cpu_snapshot(), time.perf_counter()
    result = await replay(engine, trace)
    wall = time.perf_counter() - t1
    result["cpu_s"] = cpu_spent(before, cpu_snapshot(), wall)
    result["idle_p50_s"] = percentile(idle, 50)
    result["idle_latencies_s"] = idle
    result["load_before"] = load
    result["warm_up_and_idle_s"] = t1 - t0
    print(
        f"{name:7}: {result['images_per_s']:.2f} images/s, p50 {result['p50_s']:.2f} s, "
        f"p95 {result['p95_s']:.2f} s, one at a time p50 {result['idle_p50_s']:.2f} s "
        f"({time.perf_counter() - t0:.0f} s)",
        flush=True,
    )
    return result


# The Ray cluster: started here, so closing a RayEngine leaves it up for the next one
def start_cluster(cpus: int) -> None:
    import ray

    ray.init(
        num_cpus=cpus,
        include_dashboard=False,
        namespace="imagine-bot",
        logging_level=logging.WARNING,
        log_to_driver=False,
    )


def worker_threads() -> dict[str, Any]:
    """What a Ray worker on this cluster sees: OMP_NUM_THREADS and torch's thread count."""
    import ray

    @ray.remote(num_cpus=0)
    def probe() -> dict[str, Any]:
        import torch

        return {
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "torch": torch.get_num_threads(),
        }

    return ray.get(probe.remote(), timeout=120)


def delete_app(app: str) -> None:
    from ray import serve

    serve.delete(app)


def stop_cluster() -> None:
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


async def timed(step: Callable[[], Awaitable[Any]]) -> float:
    t0 = time.perf_counter()
    await step()
    return time.perf_counter() - t0


async def run(args: argparse.Namespace) -> dict[str, Any]:
    trace = make_trace(args)
    config = dataclasses.replace(
        engine_config(args, "builtin:tiny", trace), scheduling=args.scheduling
    )
    runs: dict[str, dict[str, Any]] = {}
    starts: dict[str, float] = {}

    local = Engine(config)
    starts["local"] = await timed(local.start)
    try:
        runs["local"] = await measure("local", local, trace, args, replicas=1)
    finally:
        await local.close()

    t0 = time.perf_counter()
    await asyncio.to_thread(start_cluster, max(2, os.cpu_count() or 1))
    starts["ray cluster"] = time.perf_counter() - t0
    workers: dict[str, Any] = {}
    try:
        workers = await asyncio.to_thread(worker_threads)
        for replicas in (1, 2):
            name, app = f"ray x{replicas}", f"ray-bench-{replicas}"
            ray = RayConfig(address="local", replicas=replicas, num_gpus=0, num_cpus=1, app=app)
            engine = RayEngine(config, ray)
            starts[name] = await timed(engine.start)
            try:
                runs[name] = await measure(name, engine, trace, args, replicas=replicas)
            finally:
                await engine.close()
                await asyncio.to_thread(delete_app, app)  # its replica holds a CPU
    finally:
        await asyncio.to_thread(stop_cluster)

    a, b, c = (runs[s] for s in SETUPS)
    ratios = {
        "throughput_2_over_1": c["images_per_s"] / b["images_per_s"],
        "throughput_2_over_local": c["images_per_s"] / a["images_per_s"],
        "throughput_1_over_local": b["images_per_s"] / a["images_per_s"],
        "p50_1_over_local": b["p50_s"] / a["p50_s"],
        "p95_1_over_local": b["p95_s"] / a["p95_s"],
        "idle_p50_1_over_local": b["idle_p50_s"] / a["idle_p50_s"],
        "p50_2_over_1": c["p50_s"] / b["p50_s"],
    }
    settings = {k: v for k, v in vars(args).items() if k not in {"out", "readme"}}
    settings["cache_dir"] = str(settings["cache_dir"]) if settings["cache_dir"] else None
    return {
        "benchmark": "ray",
        "machine": machine(),
        "model": "builtin:tiny",
        "settings": settings,
        "worker": {"driver_torch_threads": _torch_threads(), "ray_worker": workers},
        "start_s": starts,
        "trace": {
            "requests": len(trace),
            "images": sum(a.count for a in trace),
            "duration_s": trace[-1].at,
        },
        "runs": runs,
        "ratios": ratios,
        "goals": {
            "throughput_2_over_1": GOAL_SCALING,
            "p50_1_over_local": 1 + GOAL_ADDED_P50,
        },
    }


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _verdict(ok: bool) -> str:
    return "met" if ok else "missed"


def table(result: dict[str, Any]) -> str:
    s, m, t = result["settings"], result["machine"], result["trace"]
    r, starts = result["ratios"], result["start_s"]
    head = (
        f"Ray Serve replicas vs the local engine on CPU ({m['cores']} cores), torch "
        f"{m.get('torch')}, {m['date']}: builtin:tiny, {t['requests']} requests "
        f"({t['images']} images) over {t['duration_s']:.0f} s, Poisson {s['rate']}/s, steps "
        f"{s['steps']}, sizes {[f'{w}x{h}' for w, h in s['sizes']]}, text-to-image, "
        f"{s['scheduling']}-level scheduling, max {s['max_batch_size']} images per UNet call; "
        f"one torch thread per engine, replicas num_cpus=1; one run each."
    )
    rows: list[list[Any]] = []
    for name in SETUPS:
        x = result["runs"][name]
        cpu = x["cpu_s"]
        rows.append(
            [
                name,
                f"{x['images_per_s']:.3g}",
                f"{x['p50_s']:.3g} / {x['p95_s']:.3g}",
                f"{x['idle_p50_s']:.3g}",
                " / ".join(
                    f"{cpu[k]:.0f}" for k in ("driver", "replicas", "ray_and_serve", "other")
                )
                + f" (in {cpu['wall_s']:.0f} s)"
                if cpu
                else "",
                f"{starts[name]:.1f}",
            ]
        )
    headers = [
        "engine",
        "images/s",
        "p50 / p95 submit to image (s)",
        f"p50 one at a time, {s['idle']} requests (s)",
        "CPU s during the replay: driver / replicas / Ray+Serve / other",
        "start (s)",
    ]
    scaling, added = r["throughput_2_over_1"], r["p50_1_over_local"] - 1
    idle_added = r["idle_p50_1_over_local"] - 1
    notes = (
        f"\n\n2 replicas / 1 replica: {scaling:.2f}x images/s (goal >= {GOAL_SCALING}x: "
        f"{_verdict(scaling >= GOAL_SCALING)}); 2 replicas / local: "
        f"{r['throughput_2_over_local']:.2f}x. Ray with 1 replica vs local: "
        f"{r['throughput_1_over_local']:.2f}x images/s, p50 {added:+.0%} under the trace "
        f"(goal <= +{GOAL_ADDED_P50:.0%}: {_verdict(added <= GOAL_ADDED_P50)}), p95 "
        f"{r['p95_1_over_local'] - 1:+.0%}, p50 one at a time {idle_added:+.0%}. The CPU "
        f"columns: in-process replicas count as the driver for local; the Ray cluster took "
        f"{starts['ray cluster']:.0f} s to start."
    )
    return head + "\n\n" + markdown_table(headers, rows) + notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny run to check the script")
    parser.add_argument("--requests", type=int, help="default: 40 (smoke: 6)")
    parser.add_argument("--rate", type=float, help="arrivals per second; default 2.0 (smoke 20)")
    parser.add_argument("--steps", type=int, nargs="+", help="step mix; default 2 10 15")
    parser.add_argument("--sizes", type=parse_size, nargs="+", help="default 64 96")
    parser.add_argument("--size-weights", type=float, nargs="+", help="default 0.7 0.3")
    parser.add_argument("--users", type=int, default=6)
    parser.add_argument("--two-image-share", type=float, default=0.2)
    parser.add_argument("--idle", type=int, help="requests run one at a time; default 6 (smoke 2)")
    parser.add_argument("--scheduler", default="ddim")
    parser.add_argument("--scheduling", default="batch", choices=("batch", "step"))
    parser.add_argument("--max-batch-size", type=int, default=8, help="images per UNet call")
    parser.add_argument("--batch-wait-ms", type=int, default=50)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--cache-dir", "--cache", type=Path, help="where builtin:tiny is built")
    parser.add_argument("--out", default=None, help="results name under bench/results/")
    parser.add_argument("--readme", action="store_true", help="refresh the README's table")
    # `make_trace` and `engine_config` read these: text-to-image on one model, on the CPU.
    parser.set_defaults(gpu=False, models=1, image_share=0.0, upscale_share=0.0)
    args = parser.parse_args()
    smoke = args.smoke
    args.requests = args.requests or (6 if smoke else 40)
    args.rate = args.rate or (20.0 if smoke else 2.0)
    args.steps = args.steps or ([2] if smoke else [2, 10, 15])
    args.sizes = args.sizes or ([(64, 64)] if smoke else [(64, 64), (96, 96)])
    args.size_weights = args.size_weights or ([1.0] if smoke else [0.7, 0.3])
    args.idle = args.idle if args.idle is not None else (2 if smoke else 6)
    if len(args.size_weights) != len(args.sizes):
        parser.error("--size-weights needs one weight per size")

    # Before Ray starts: its workers (the replicas) inherit this process's environment.
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ray-bench-") as tmp:
        args.cache_dir = args.cache_dir or Path(tmp)
        result = asyncio.run(run(args))
    result["wall_s"] = time.perf_counter() - t0
    text = table(result)
    print(text)
    print(f"total {result['wall_s']:.0f} s")
    if smoke:  # checks the payload; the results folder keeps full runs only
        json.dumps(result)
        print("smoke run: results not saved")
        return
    print(f"wrote {save(args.out or 'ray_bench', result)}")
    if args.readme:
        update_readme("ray", text)


if __name__ == "__main__":
    main()
