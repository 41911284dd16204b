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
a fifth of the requests for two images), text-to-image only, at 2 arrivals/s, about 2.3
images/s: some two and a half times what one single-threaded replica serves here (~0.9
images/s, ~1.1 s of CPU an image) and more than two can, so every engine has a queue for most
of the replay and images/s over the makespan measures its capacity, not the arrival rate; a
second replica can only help when there is work waiting for it. Under such a queue the p50 is
mostly waiting, and which batch runs next (batch-level scheduling groups equal steps and
sizes) shifts with a few milliseconds of delay, so the p50 under the trace moves either way
between engines that are equally fast; the first `--idle` requests of the trace are therefore
also run one at a time before the replay (nothing queued, `--idle-rounds` times, since this
VM's CPU steal comes and goes): that p50 is the path's own cost.

`RayEngine` keeps Ray out of the bot's process: it starts a bridge child (`python -m
engine.cluster.child`) that connects and streams the jobs, and with `address = "local"` that
child starts a private cluster and shuts it down on close, so (b) and (c) each start from
nothing. The children inherit this process's environment: `OMP_NUM_THREADS=1` is set before
they start, and `RAY_ADDRESS=local` so the child's `ray.init()` starts a new cluster rather
than joining one already running on the machine (a test's, or one from `ray start`).

Everything runs on the same cores: the driver (this process: the bot's side of `RayEngine`),
the bridge, Ray's daemons and Serve's controller compete with the replicas, so two replicas
on two cores can at best approach 2x. CPU seconds per role (driver, bridge, replicas, Ray and
Serve, anything else on the machine) are recorded for each replay to show where the time
went, and the table warns when other work or CPU steal took over a tenth of the machine.

Figures are measured side by side in one run; absolute times on a shared CPU are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from engine import Engine, EngineClient, ImageRequest
from engine.cluster import RayConfig, RayEngine

from .plots import latency_plot
from .report import machine, markdown_table, save, settings_of, update_docs
from .stats import percentile
from .trace_bench import Arrival, engine_config, make_trace, parse_size

#: The three engines, in the order they run.
SETUPS = ("local", "ray x1", "ray x2")
GOAL_SCALING = 1.8  # 2-replica over 1-replica throughput
GOAL_ADDED_P50 = 0.10  # Ray 1 replica over local, p50 submit to image
#: Processes whose CPU time is counted apart (see `cpu_snapshot`).
ROLES = ("driver", "bridge", "replicas", "ray_and_serve")


async def warm_up(engine: EngineClient, trace: list[Arrival], per_size: int) -> None:
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


async def one_at_a_time(engine: EngineClient, arrivals: list[Arrival]) -> list[float]:
    """Submit to image for each request alone: the path's latency with nothing queued."""
    out = []
    for a in arrivals:
        t0 = time.perf_counter()
        await engine.generate(a.request())
        out.append(time.perf_counter() - t0)
    return out


async def replay(engine: EngineClient, trace: list[Arrival]) -> dict[str, Any]:
    """Submit the trace on schedule; images/s over the makespan, and submit-to-image times."""
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def finish(request: ImageRequest, submitted: float) -> tuple[int, float, float]:
        result = await engine.submit(await engine.check(request)).result()
        done = loop.time()
        return len(result.images), done - submitted, done - start

    waiting = []
    for a in trace:  # one submitter; sleeping is the trace's schedule, not a wait for an event
        await asyncio.sleep(max(0.0, start + a.at - loop.time()))
        waiting.append(asyncio.create_task(finish(a.request(), loop.time())))
    outcomes = await asyncio.gather(*waiting)
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
def cpu_snapshot() -> dict[str, Any]:
    """Busy CPU seconds of the whole machine, and of this process and each of its
    descendants (the bridge child, its Ray daemons and workers) by pid and role, with the
    replicas' OMP_NUM_THREADS. psutil comes with Ray; without it nothing is recorded."""
    try:
        import psutil
    except ImportError:
        return {}
    me = psutil.Process()
    procs: dict[int, tuple[str, float]] = {}
    threads: set[str | None] = set()
    for p in [me, *me.children(recursive=True)]:
        try:
            with p.oneshot():
                line, times = " ".join(p.cmdline()), p.cpu_times()
            role = _role(line) if p.pid != me.pid else "driver"
            if role == "replicas":
                threads.add(p.environ().get("OMP_NUM_THREADS"))
        except psutil.Error:  # ended meanwhile
            continue
        procs[p.pid] = (role, times.user + times.system)
    t = psutil.cpu_times()
    busy = t.user + t.nice + t.system + t.irq + t.softirq
    return {
        "busy": busy,
        "steal": getattr(t, "steal", 0.0),
        "procs": procs,
        "replica_omp_threads": sorted(str(n) for n in threads),
    }


def _role(cmdline: str) -> str:
    if "engine.cluster.child" in cmdline:
        return "bridge"
    if "ServeReplica" in cmdline:  # Ray names its worker processes after their actor
        return "replicas"
    return "ray_and_serve"  # gcs_server, raylet, ServeController, agents, idle workers


def cpu_spent(before: dict[str, Any], after: dict[str, Any], wall: float) -> dict[str, Any]:
    """CPU seconds by role between two snapshots; "other" is the machine's busy time that
    none of ours accounts for (other work on the machine, processes that ended)."""
    if not before or not after:
        return {}
    out: dict[str, Any] = dict.fromkeys(ROLES, 0.0)
    each = []
    for pid, (role, seconds) in after["procs"].items():
        spent = seconds - before["procs"].get(pid, (role, 0.0))[1]
        out[role] += spent
        if role == "replicas":
            each.append(round(spent, 2))
    out["other"] = max(0.0, after["busy"] - before["busy"] - sum(out.values()))
    out["each_replica"] = sorted(each)  # how evenly Serve spread the work
    out["replica_omp_threads"] = after["replica_omp_threads"]
    out["steal"] = after["steal"] - before["steal"]  # a VM's cores lent to other guests
    out["wall_s"] = wall
    return out


async def measure(
    name: str, engine: EngineClient, trace: list[Arrival], args: argparse.Namespace, replicas: int
) -> dict[str, Any]:
    """Warm up, run the idle requests one at a time, then replay the trace."""
    t0 = time.perf_counter()
    await warm_up(engine, trace, per_size=2 * replicas)
    before, t1 = cpu_snapshot(), time.perf_counter()
    idle = []
    for _ in range(args.idle_rounds):  # rounds: one slow moment of the VM weighs less
        idle += await one_at_a_time(engine, trace[: args.idle])
    idle_cpu = cpu_spent(before, cpu_snapshot(), time.perf_counter() - t1)
    load = os.getloadavg()[0]
    before, t1 = cpu_snapshot(), time.perf_counter()
    result = await replay(engine, trace)
    wall = time.perf_counter() - t1
    result["cpu_s"] = cpu_spent(before, cpu_snapshot(), wall)
    result["idle_p50_s"] = percentile(idle, 50) if idle else float("nan")
    result["idle_latencies_s"] = idle
    result["idle_cpu_s"] = idle_cpu
    result["load_before"] = load
    result["warm_up_and_idle_s"] = t1 - t0
    print(
        f"{name:7}: {result['images_per_s']:.2f} images/s, p50 {result['p50_s']:.2f} s, "
        f"p95 {result['p95_s']:.2f} s, one at a time p50 {result['idle_p50_s']:.2f} s "
        f"({time.perf_counter() - t0:.0f} s)",
        flush=True,
    )
    return result


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

    for replicas in (1, 2):
        name = f"ray x{replicas}"
        app = f"ray-bench-{replicas}"
        ray = RayConfig(address="local", replicas=replicas, num_gpus=0, num_cpus=1, app=app)
        engine = RayEngine(config, ray)
        starts[name] = await timed(engine.start)  # its bridge starts a private cluster
        try:
            runs[name] = await measure(name, engine, trace, args, replicas=replicas)
        finally:
            await engine.close()  # and shuts it down: (c) starts from nothing as (b) did

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
    settings = settings_of(args, "out", "readme")
    return {
        "benchmark": "ray",
        "machine": machine(),
        "model": "builtin:tiny",
        "settings": settings,
        "torch_threads": _torch_threads(),
        "environment": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "RAY_ADDRESS")},
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
    per_image = []
    for name in SETUPS:
        x = result["runs"][name]
        cpu = x["cpu_s"]
        if cpu:
            engine_s = cpu["driver"] if name == "local" else cpu["replicas"]
            cores = engine_s / cpu["wall_s"]
            per_image.append(f"{name} {engine_s / x['images']:.2f} s, {cores:.2f} cores")
        rows.append(
            [
                name,
                f"{x['images_per_s']:.3g}",
                f"{x['p50_s']:.3g} / {x['p95_s']:.3g}",
                f"{x['idle_p50_s']:.3g}",
                " / ".join(f"{cpu[k]:.1f}" for k in (*ROLES, "other"))
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
        f"p50 one at a time, {s['idle']} requests x {s['idle_rounds']} (s)",
        "CPU s in the replay: driver / bridge / replicas / Ray+Serve / other",
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
        f"{r['p95_1_over_local'] - 1:+.0%}, p50 one at a time {idle_added:+.0%} (under a queue "
        f"the p50 follows the order batches happen to run in; one at a time it is the path's "
        f"own cost). Engine CPU per image and cores kept busy: {'; '.join(per_image)}. The "
        f"local engine runs in the driver; Ray's start includes its private cluster's."
    )
    return head + "\n\n" + markdown_table(headers, rows) + notes + _disturbed(result)


def _disturbed(result: dict[str, Any]) -> str:
    """A warning when other work (or the hypervisor) took over a tenth of the machine's CPU
    during a replay: its figures then say little about the engine."""
    cores = result["machine"]["cores"] or 1
    shares = []
    for name in SETUPS:
        for phase, key in (("one at a time", "idle_cpu_s"), ("replay", "cpu_s")):
            cpu = result["runs"][name][key]
            if cpu and cpu["wall_s"] > 0:
                share = (cpu["other"] + cpu["steal"]) / (cores * cpu["wall_s"])
                if share > 0.1:
                    shares.append(f"{name} {phase} {share:.0%}")
    if not shares:
        return ""
    return (
        "\n\n**Disturbed:** other work on the machine or CPU steal took a share of its CPU "
        "time: " + ", ".join(shares) + "; those figures are less reliable (rerun when quiet)."
    )


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
    parser.add_argument("--idle-rounds", type=int, help="times they are run; default 3 (smoke 1)")
    parser.add_argument("--scheduler", default="ddim")
    parser.add_argument("--scheduling", default="batch", choices=("batch", "step"))
    parser.add_argument("--max-batch-size", type=int, default=8, help="images per UNet call")
    parser.add_argument("--batch-wait-ms", type=int, default=50)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--cache-dir", "--cache", type=Path, help="where builtin:tiny is built")
    parser.add_argument("--out", default=None, help="results name under bench/results/")
    parser.add_argument(
        "--docs",
        "--readme",
        dest="readme",
        action="store_true",
        help="refresh its table on docs/benchmarks.md",
    )
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
    args.idle_rounds = args.idle_rounds or (1 if smoke else 3)
    if len(args.size_weights) != len(args.sizes):
        parser.error("--size-weights needs one weight per size")

    # The bridge child, its Ray cluster and the replicas inherit this process's environment:
    # one torch thread each, and a new private cluster (not one running on the machine).
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["RAY_ADDRESS"] = "local"
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
        update_docs("ray", text, latency_plot(result, "ray"))


if __name__ == "__main__":
    main()
