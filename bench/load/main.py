"""One load run from the command line: build the world, start the bot, idle, load, stop,
then print, check and save the figures (see the package's docstring)."""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bot.ops.heap import settle_heap
from testkit.world import World, open_world

from ..report import RESULTS, ROOT, save, update_docs
from .analysis import Observed, figures, summarize_pyspy
from .driver import Load
from .probes import (
    LoopLag,
    MemorySampler,
    ProbedBot,
    PySpy,
    database_file,
    read_jobs,
    tiny_cache,
    wait_ledger_quiet,
)
from .report import goal_lines, profile_text, table

__all__ = ["fail_without_delivery", "main", "parser", "run", "stop_run"]

RESULTS_PROFILE = RESULTS / "load_bench.pyspy.txt"
RESULTS_LOG = RESULTS / "load_bench.bot.log"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="The real bot under load: N simulated users.")
    p.add_argument("--users", type=int, default=200, help="simulated users, one /imagine each")
    p.add_argument("--duration", type=float, default=10.0, help="seconds the /imagine arrive in")
    p.add_argument("--steps", type=int, default=2, help="denoising steps per image")
    p.add_argument("--batch", type=int, default=4, help="[engine] max_batch_size")
    p.add_argument("--batch-wait-ms", type=int, default=20, help="[engine] batch_wait_ms")
    p.add_argument("--channels", type=int, default=1, help="channels the users are spread over")
    p.add_argument("--info-share", type=float, default=0.25, help="share of users running /info")
    p.add_argument("--cancel-share", type=float, default=0.1, help="share pressing Cancel")
    p.add_argument("--reroll-share", type=float, default=0.1, help="share pressing Reroll")
    p.add_argument("--seed", type=int, default=6)
    p.add_argument("--idle", type=float, default=5.0, help="seconds idle before the load")
    p.add_argument("--timeout", type=float, default=420.0, help="give up on open jobs after")
    p.add_argument("--heartbeat-ms", type=int, default=250, help="gateway heartbeat interval")
    p.add_argument("--omp-threads", type=int, default=1, help="OMP_NUM_THREADS of the bot")
    p.add_argument("--plain", action="store_true", help="run imagine-bot without the probe")
    p.add_argument("--profile", action="store_true", help="sample the bot with py-spy")
    p.add_argument("--profile-rate", type=int, default=100, help="py-spy samples per second")
    p.add_argument("--keep-profile", action="store_true", help="copy py-spy's raw stacks")
    p.add_argument("--keep-log", action="store_true", help="save the bot's output")
    p.add_argument("--model-cache", default="", help="builtin:tiny cache folder")
    p.add_argument(
        "--stop-after",
        type=float,
        default=None,
        metavar="S",
        help="instead of waiting for the jobs: SIGTERM the bot S seconds after the burst was "
        "sent and time its exit (nothing saved)",
    )
    p.add_argument(
        "--stop-within", type=float, default=120.0, help="with --stop-after: SIGKILL after"
    )
    p.add_argument(
        "--docs",
        "--readme",
        dest="readme",
        action="store_true",
        help="refresh its table on docs/benchmarks.md (1,000 users or more: the burst's)",
    )
    return p


def configure(args: argparse.Namespace, world: World, tmp: Path) -> ProbedBot:
    """The bot's config for throughput (quotas and queues large), and the bot, not started."""
    config = world.configure(
        engine={
            "max_batch_size": args.batch,
            "batch_wait_ms": args.batch_wait_ms,
            "max_queue": max(1024, 4 * args.users),
        },
        quota={"daily_images": 100_000, "max_queued_per_user": 50},
        # The point is throughput and responsiveness, not the per-user flood guard.
        moderation={"commands_per_minute": 0},
        ops={"listen": "127.0.0.1:0"},
    )
    return ProbedBot(
        world.server,
        config,
        token=world.token,
        probe_dir=None if args.plain else tmp,
        omp_threads=args.omp_threads,
    )


def load_world(args: argparse.Namespace, tmp: Path, cache: Path) -> Any:
    """The world a load runs in (`open_world`'s context): one guild, `--channels` channels,
    `--users` users."""
    return open_world(
        tmp,
        cache,
        guild="Load Club",
        channels=[f"art-{k}" for k in range(args.channels)],
        users=[f"user{i:04d}" for i in range(args.users)],
        default_timeout=30,
        heartbeat_interval_ms=args.heartbeat_ms,
        clean=False,  # the violations are figures here, not failures
    )


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """One run, start to figures."""
    cache = await tiny_cache(args.model_cache)
    loadavg = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="imagine-load-") as tmp_name:
        tmp = Path(tmp_name)
        async with load_world(args, tmp, cache) as world:
            bot = configure(args, world, tmp)
            seen = await observe(args, world, bot, tmp)
            if args.keep_log:
                RESULTS_LOG.parent.mkdir(parents=True, exist_ok=True)
                RESULTS_LOG.write_text(bot.output + "\n")
            if seen["pyspy"] and args.keep_profile:
                RESULTS_PROFILE.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(tmp / "pyspy.txt", RESULTS_PROFILE)
            return figures(Observed(args=args, bot=bot, loadavg=loadavg, **seen))


async def observe(
    args: argparse.Namespace, world: World, bot: ProbedBot, tmp: Path
) -> dict[str, Any]:
    """Start the bot, let it idle, load it, stop it: what `Observed` needs besides."""
    await bot.start()
    memory = MemorySampler(bot.pid).start()
    try:
        ready_s = await bot.ready()
        print(f"bot ready after {ready_s:.1f} s; idling {args.idle:g} s", flush=True)
        idle_start = time.time()
        await asyncio.sleep(args.idle)  # the idle phase is a length of time, not an event
        idle = (idle_start, time.time())
        startup_hwm = memory.hwm_kb()
        reset = memory.reset_hwm()
        seen = await load_phase(args, world, bot, tmp)
        seen["load_hwm"] = memory.hwm_kb() if reset else None
    finally:
        code = await bot.stop(within=90)
        memory.stop()
    rows = await asyncio.to_thread(read_jobs, database_file(tmp))
    return {
        **seen,
        "server": world.server,
        "rows": rows,
        "memory": memory,
        "code": code,
        "ready_s": ready_s,
        "idle": idle,
        "startup_hwm": startup_hwm,
    }


async def load_phase(
    args: argparse.Namespace, world: World, bot: ProbedBot, tmp: Path
) -> dict[str, Any]:
    """The users' load, under py-spy with `--profile`, until every job settled and the
    ledger has none open."""
    profiler: PySpy | None = None
    if args.profile:
        profiler = PySpy(bot.pid, tmp / "pyspy.txt", args.profile_rate)
        if not await profiler.start():
            profiler = None
    profile_start = time.perf_counter()
    before = await bot.metrics()
    channels, users = list(world.channels.values()), list(world.users.values())
    rng = random.Random(args.seed)
    load = Load(world.server, args, channels, users, rng, bot.logged_deliveries)
    # The test server records when each answer comes on this process's loop. A full
    # collection of this process's heap (the bot's and torch's modules are imported here
    # too) stalled that loop 175 ms in mid-burst, and every answer that came meanwhile
    # counted as late: this process's heap is settled as the bot's is.
    settle_heap()
    server_lag = LoopLag().start()
    print(
        f"load: {args.users} users, /imagine over {args.duration:g} s "
        f"({args.steps} steps), buttons and /info",
        flush=True,
    )
    try:
        await load.run()
    finally:
        lag = await server_lag.stop()
    load_done = time.time()
    after = await bot.metrics()
    await wait_ledger_quiet(database_file(tmp), within=60)
    pyspy_log = await profiler.stop() if profiler else ""
    profiled_s = time.perf_counter() - profile_start
    pyspy = summarize_pyspy(tmp / "pyspy.txt", args.profile_rate, profiled_s) if profiler else {}
    return {
        "load": load,
        "load_done": load_done,
        "server_lag": lag,
        "metrics": (before, after),
        "pyspy": pyspy,
        "pyspy_log": pyspy_log,
    }


async def stop_run(args: argparse.Namespace) -> str:
    """Stopping under load: the burst, `--stop-after` seconds, SIGTERM; one line saying how
    long the bot took to exit, with how many jobs the ledger held queued and running, and
    how many it still holds open after the exit (left to the next start)."""
    cache = await tiny_cache(args.model_cache)
    with tempfile.TemporaryDirectory(prefix="imagine-stop-") as tmp_name:
        tmp = Path(tmp_name)
        async with load_world(args, tmp, cache) as world:
            bot = configure(args, world, tmp)
            await bot.start()
            await bot.ready()
            channels, users = list(world.channels.values()), list(world.users.values())
            rng = random.Random(args.seed)
            load = Load(world.server, args, channels, users, rng)
            print(f"stop: {args.users} /imagine over {args.duration:g} s", flush=True)
            await load.send_all()
            await asyncio.sleep(args.stop_after)  # a length of time, not an event
            rows = await asyncio.to_thread(read_jobs, database_file(tmp))
            queued = sum(r["status"] == "queued" for r in rows)
            running = sum(r["status"] == "running" for r in rows)
            bot.unwatch()
            assert bot.process is not None
            signalled = time.perf_counter()
            bot.process.send_signal(signal.SIGTERM)
            try:
                code = await bot.exited(args.stop_within)
                how = f"stopped in {time.perf_counter() - signalled:.1f} s (exit {code})"
            except TimeoutError:
                bot.process.kill()
                await bot.exited(30)
                how = f"NOT stopped within {args.stop_within:g} s: killed"
            after = await asyncio.to_thread(read_jobs, database_file(tmp))
            left = sum(r["status"] in ("queued", "running") for r in after)
            if args.keep_log:
                RESULTS_LOG.parent.mkdir(parents=True, exist_ok=True)
                RESULTS_LOG.write_text(bot.output + "\n")
            return (
                f"{how} with {queued} queued and {running} running of {len(rows)} jobs; "
                f"{left} left open for the next start"
            )


def fail_without_delivery(name: str, result: dict[str, Any]) -> None:
    """Exit with status 1 and one line when the run saw no result delivered: its figures
    measure nothing (a bot that cannot deliver, or a benchmark that cannot see it)."""
    acc = result["accounting"]
    if not acc["delivered_jobs"]:
        sys.exit(
            f"{name} FAILED: no delivery seen ({acc['requested']} jobs requested, "
            f"{acc['done_rows']} done in the ledger); results not saved"
        )


def main() -> None:
    args = parser().parse_args()
    if args.stop_after is not None:
        print(asyncio.run(stop_run(args)))
        return
    started = time.perf_counter()
    result = asyncio.run(run(args))
    result["wall_seconds"] = time.perf_counter() - started
    text = table(result)
    profile = profile_text(result)
    print(text)
    if profile:
        print("\nWhere the time goes:\n" + profile)
    for line in goal_lines(result):
        print(line)
    print(f"run took {result['wall_seconds']:.0f} s")
    fail_without_delivery("load_bench", result)
    burst = args.users >= 1000  # issue 24's second row: its own JSON and block
    path = save("load_bench_1000" if burst else "load_bench", result)
    print(f"wrote {path.relative_to(ROOT)}")
    if args.readme:
        update_docs("load_burst" if burst else "load", text + ("\n\n" + profile if profile else ""))
        print("updated docs/benchmarks.md")
