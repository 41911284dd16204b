"""The real bot under load: N simulated users against the Discord test server, and memory.

`imagine-bot run`, in the world the end-to-end tests build (`testkit.world`: `builtin:tiny`, a
temporary SQLite file, `OMP_NUM_THREADS=1`), connects to the Discord test server, which then
plays N users: each runs one `/imagine` (Poisson arrivals in the first `--duration` seconds,
seeded), some run `/info`, some press Cancel on their progress message, some press Reroll on
their result.
Quotas and queues are set large so the run measures throughput and responsiveness.

Measured:

* time to first answer: from the server dispatching INTERACTION_CREATE to the bot's first
  callback (Discord's limit is 3 s; goal p99 < 500 ms), every interaction;
* event-loop lag of the bot while generating (goal p99 < 100 ms): the bot runs under
  `bench.botprobe` (the unchanged `bot.cli.main` plus a 20 ms sleep probe on its loop, and
  timings of its ledger calls); the gateway heartbeat gaps (250 ms heartbeats) are an
  outside estimate, and with `[ops] listen` the bot's own `imagine_event_loop_lag_seconds`
  and `imagine_first_answer_seconds` histograms are scraped before and after the load;
* command to delivered image (p50, p95) and images/s;
* jobs requested vs delivered vs database rows: nothing lost, nothing doubled;
* memory: RSS of the bot process (and any children) idle after start-up, and its peak under
  load (`VmHWM` reset through `/proc/PID/clear_refs` once idle).

    python -m bench.load_bench [--users 200] [--duration 10] [--steps 2] [--profile] [--docs]

`--profile` samples the bot with py-spy during the load (`pip install py-spy`); the loop
stall sampler and the ledger timings of `bench.botprobe` run always (`--plain` runs the bare
`imagine-bot`).
Figures on a shared 2-core machine are noisy: compare runs made one after the other.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import itertools
import json
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from engine.tiny import builtin_folder, default_cache_dir
from testkit.discord_server import Channel, DiscordTestServer, Interaction, Message, User
from testkit.jobs import JOB_ID, button_id
from testkit.process import BotProcess
from testkit.world import open_world

from .report import ROOT, machine, markdown_table, save, update_docs

GOAL_FIRST_ANSWER_P99 = 0.5
GOAL_LOOP_LAG_P99 = 0.1
DISCORD_DEADLINE = 3.0

JOB_TEXT = re.compile(r"Job #(\d+)")
RESULT_FILE = re.compile(r"imagine-(\d+)-\d+\.png")
ENDED_TEXT = re.compile(r"was cancelled|failed|flagged")
EXCEPTION_LINE = re.compile(r"[A-Za-z_][\w.]*(?:Error|Exception|NotFound|Forbidden)\b.*: ")


# -- the bot process ---------------------------------------------------------------------------


class LoadBot(BotProcess):
    """`BotProcess` running the bot under `bench.botprobe` (loop-lag probe), or plain."""

    def __init__(
        self,
        server: DiscordTestServer,
        config: Path,
        *,
        token: str,
        probe_dir: Path | None,
        omp_threads: int,
    ) -> None:
        self.probe_dir = probe_dir
        env = {"OMP_NUM_THREADS": str(omp_threads)}
        if probe_dir is None:
            super().__init__(server, config, token=token, env=env)
            return
        env["IMAGINE_BENCH_LAG_FILE"] = str(probe_dir / "lag.txt")
        env["IMAGINE_BENCH_STALL_FILE"] = str(probe_dir / "stalls.json")
        env["IMAGINE_BENCH_LEDGER_FILE"] = str(probe_dir / "ledger.json")
        command = [sys.executable, "-m", "bench.botprobe"]
        super().__init__(server, config, token=token, command=command, pythonpath=[ROOT], env=env)

    def _probe_file(self, name: str) -> Path | None:
        return self.probe_dir / name if self.probe_dir else None

    @property
    def lag_file(self) -> Path | None:
        return self._probe_file("lag.txt")

    @property
    def stall_file(self) -> Path | None:
        return self._probe_file("stalls.json")

    @property
    def ledger_file(self) -> Path | None:
        return self._probe_file("ledger.json")


# -- memory ------------------------------------------------------------------------------------


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants (threads' children included)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                with contextlib.suppress(OSError):
                    children = Path(f"/proc/{current}/task/{task}/children").read_text().split()
                    todo += [int(c) for c in children]
    return found


def _status_kb(pid: int) -> dict[str, int]:
    values = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values


class MemorySampler:
    """Samples the RSS of the bot's process tree every `every` seconds on its own thread."""

    def __init__(self, pid: int, every: float = 0.1) -> None:
        self.pid = pid
        self.every = every
        self.samples: list[tuple[float, int]] = []  # (unix time, RSS kB of the whole tree)
        self.processes: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> MemorySampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            pids = _tree(self.pid)
            self.processes.update(pids)
            rss = sum(_status_kb(p).get("VmRSS", 0) for p in pids)
            if rss:
                self.samples.append((time.time(), rss))
            self._stop.wait(self.every)

    def hwm_kb(self) -> int:
        """Sum of the tree's VmHWM (each process's peak; an upper bound for the tree)."""
        return sum(_status_kb(p).get("VmHWM", 0) for p in _tree(self.pid))

    def reset_hwm(self) -> bool:
        """Reset VmHWM to the current RSS (`echo 5 > /proc/PID/clear_refs`, Linux >= 4.0)."""
        ok = True
        for pid in _tree(self.pid):
            try:
                Path(f"/proc/{pid}/clear_refs").write_text("5")
            except OSError:
                ok = False
        return ok

    def between(self, start: float, end: float) -> list[int]:
        return [rss for at, rss in self.samples if start <= at <= end]


# -- figures -----------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100), linear between closest ranks; None without values."""
    if not values:
        return None
    data = sorted(values)
    k = (len(data) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def spread(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50": pct(values, 50),
        "p95": pct(values, 95),
        "p99": pct(values, 99),
        "max": max(values) if values else None,
    }


# -- the load ----------------------------------------------------------------------------------


def failed_interaction(interaction: Interaction, grace: float = 10.0) -> bool:
    """Never acknowledged in time: Discord shows the user "This interaction failed"."""
    if interaction.acknowledged:
        return False
    return bool(interaction.callbacks) or interaction.age > DISCORD_DEADLINE + grace


@dataclass(eq=False)
class JobAsk:
    """One request for images: an `/imagine` or a Reroll press."""

    interaction: Interaction
    user: User
    kind: str  # "imagine" or "reroll"
    cancel_after: float | None = None  # press Cancel this long after the progress shows
    reroll_after: float | None = None  # press Reroll this long after the result shows
    job_id: int | None = None
    button_planned: bool = False


@dataclass
class Load:
    server: DiscordTestServer
    args: argparse.Namespace
    channels: list[Channel]
    users: list[User]
    rng: random.Random
    asks: list[JobAsk] = field(default_factory=list)
    clicks: list[tuple[str, Interaction]] = field(default_factory=list)  # (button, interaction)
    infos: list[Interaction] = field(default_factory=list)
    pending_clicks: int = 0
    skipped_clicks: collections.Counter[str] = field(default_factory=collections.Counter)
    cancel_acked: set[int] = field(default_factory=set)
    cancel_answered: set[int] = field(default_factory=set)
    started_wall: float = 0.0
    sent_all_wall: float = 0.0

    def channel_of(self, index: int) -> Channel:
        return self.channels[index % len(self.channels)]

    # -- reading the server's state --------------------------------------------------------

    def deliveries(self) -> dict[int, list[Message]]:
        """Public messages with result images, by job id (deleted ones too)."""
        found: dict[int, list[Message]] = collections.defaultdict(list)
        for channel in self.channels:
            for message in self.server.messages_in(channel, include_deleted=True):
                if message.ephemeral or not message.attachments:
                    continue
                ids = {
                    int(m.group(1))
                    for a in message.attachments
                    if (m := RESULT_FILE.fullmatch(a.filename))
                }
                for job_id in ids:
                    found[job_id].append(message)
        return found

    @staticmethod
    def job_id_of(ask: JobAsk) -> int | None:
        if ask.job_id is None:
            for message in ask.interaction.messages:
                for custom_id in message.custom_ids:
                    if found := JOB_ID.fullmatch(custom_id):
                        ask.job_id = int(found["job"])
                        return ask.job_id
                if found := JOB_TEXT.search(message.content):
                    ask.job_id = int(found.group(1))
                    return ask.job_id
        return ask.job_id

    def settled(self, ask: JobAsk, delivered: dict[int, list[Message]]) -> bool:
        job_id = self.job_id_of(ask)
        original = ask.interaction.original
        if job_id is None:  # refused (or failed) before a job existed: a private answer
            if original is not None and not original.loading and not original.custom_ids:
                return True
            return failed_interaction(ask.interaction)
        if job_id in delivered or job_id in self.cancel_answered:
            return True  # cancelled jobs end in the ledger; their last edit may wait long
        return original is not None and bool(ENDED_TEXT.search(original.content))

    # -- driving ---------------------------------------------------------------------------

    async def imagine(self, index: int) -> None:
        user = self.users[index]
        options = {"prompt": f"load test {index}", "seed": index, "steps": self.args.steps}
        interaction = await self.server.invoke(
            "imagine", user=user, channel=self.channel_of(index), options=options
        )
        ask = JobAsk(interaction, user, "imagine")
        roll = self.rng.random()
        if roll < self.args.cancel_share:
            ask.cancel_after = self.rng.uniform(0.2, 3.0)
        elif roll < self.args.cancel_share + self.args.reroll_share:
            ask.reroll_after = self.rng.uniform(0.2, 2.0)
        self.asks.append(ask)

    async def info(self, index: int) -> None:
        interaction = await self.server.invoke(
            "info", user=self.users[index], channel=self.channel_of(index)
        )
        self.infos.append(interaction)

    def plan_buttons(self, delivered: dict[int, list[Message]]) -> None:
        """Schedule Cancel on progress messages and Reroll on results once they show."""
        loop = asyncio.get_running_loop()
        for ask in self.asks:
            if ask.button_planned or (ask.cancel_after is None and ask.reroll_after is None):
                continue
            job_id = self.job_id_of(ask)
            if job_id is None:
                if self.settled(ask, delivered):  # refused: nothing to press
                    ask.button_planned = True
                continue
            if ask.cancel_after is not None:
                progress = ask.interaction.original
                if progress is not None and any(
                    c.startswith("imagine:cancel:") for c in progress.custom_ids
                ):
                    custom_id = button_id(progress, "cancel")
                    ask.button_planned = True
                    self._later(loop, ask.cancel_after, "cancel", progress, custom_id, ask)
            elif job_id in delivered:
                ask.button_planned = True
                message = delivered[job_id][0]
                custom_id = button_id(message, "reroll")
                self._later(loop, ask.reroll_after or 0.0, "reroll", message, custom_id, ask)

    def _later(
        self,
        loop: asyncio.AbstractEventLoop,
        delay: float,
        button: str,
        message: Message,
        custom_id: str,
        ask: JobAsk,
    ) -> None:
        self.pending_clicks += 1

        def fire() -> None:
            loop.create_task(self._click(button, message, custom_id, ask))

        loop.call_later(delay, fire)

    async def _click(self, button: str, message: Message, custom_id: str, ask: JobAsk) -> None:
        try:
            if message.deleted or custom_id not in message.custom_ids:
                self.skipped_clicks[f"{button} (already finished)"] += 1
                return
            interaction = await self.server.click(message, custom_id, user=ask.user)
            self.clicks.append((button, interaction))
            if button == "reroll":
                self.asks.append(JobAsk(interaction, ask.user, "reroll"))
            else:
                assert ask.job_id is not None
                callback = await interaction.wait_for_response(timeout=30)
                content = (callback.data or {}).get("content") or ""
                if callback.accepted and "Cancelling" in content:
                    self.cancel_acked.add(ask.job_id)
                self.cancel_answered.add(ask.job_id)
        finally:
            self.pending_clicks -= 1

    async def run(self) -> None:
        """Send every command at its seeded time, press buttons, until all jobs ended."""
        args = self.args
        n = len(self.users)
        times = sorted(self.rng.uniform(0, args.duration) for _ in range(n))
        events: list[tuple[float, str, int]] = [(at, "imagine", i) for i, at in enumerate(times)]
        for i in self.rng.sample(range(n), round(n * args.info_share)):
            events.append((self.rng.uniform(0, args.duration), "info", i))
        events.sort()
        start = time.perf_counter()
        self.started_wall = time.time()
        deadline = start + args.timeout
        sender = asyncio.create_task(self._send(events, start))
        try:
            while time.perf_counter() < deadline:
                await asyncio.sleep(0.2)
                delivered = self.deliveries()
                self.plan_buttons(delivered)
                if (
                    sender.done()
                    and self.pending_clicks == 0
                    and all(
                        ask.button_planned
                        or (ask.cancel_after is None and ask.reroll_after is None)
                        for ask in self.asks
                    )
                    and all(self.settled(ask, delivered) for ask in self.asks)
                ):
                    return
            print(f"load: gave up after {args.timeout:g} s with jobs still open", flush=True)
        finally:
            if not sender.done():
                sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)

    async def _send(self, events: list[tuple[float, str, int]], start: float) -> None:
        for at, kind, index in events:
            delay = start + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if kind == "imagine":
                await self.imagine(index)
            else:
                await self.info(index)
        self.sent_all_wall = time.time()


# -- the bot's own metrics (`[ops] listen`) ------------------------------------------------------


def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ops_supported() -> bool:
    """Whether this bot's config has `[ops] listen` (the Prometheus endpoint)."""
    try:
        from bot.config import OpsSettings
    except ImportError:
        return False
    return "listen" in {f.name for f in dataclasses.fields(OpsSettings)}


async def scrape(url: str | None) -> dict[str, float]:
    """`name{labels}` -> value from a Prometheus text page; empty if unreachable."""
    if url is None:
        return {}
    try:
        async with aiohttp.ClientSession() as session, session.get(url, timeout=5) as answer:
            text = await answer.text()
    except (aiohttp.ClientError, TimeoutError):
        return {}
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                values[key] = float(value)
    return values


def bot_histogram(
    before: dict[str, float], after: dict[str, float], name: str
) -> dict[str, Any] | None:
    """Observations of histogram `name` between two scrapes: count, mean and the bucket
    bounds holding p50/p99 (the bot exports buckets, not samples)."""
    pattern = re.compile(rf'^{name}_bucket\{{.*le="([^"]+)".*\}}$')
    buckets = []
    for key, value in after.items():
        if found := pattern.match(key):
            bound = float(found.group(1))
            buckets.append((bound, value - before.get(key, 0.0)))
    if not buckets:
        return None
    buckets.sort()
    count = buckets[-1][1]
    total = after.get(f"{name}_sum", 0.0) - before.get(f"{name}_sum", 0.0)

    def bound(q: float) -> float | None:
        if count <= 0:
            return None
        return next(b for b, c in buckets if c >= q * count)

    return {
        "count": count,
        "mean": total / count if count else None,
        "p50_at_most": bound(0.5),
        "p99_at_most": bound(0.99),
    }


# -- the run -----------------------------------------------------------------------------------


def read_jobs(db: Path) -> list[dict[str, Any]]:
    """The ledger's job rows, read with plain sqlite3 (read-only)."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute(
            "SELECT id, user_id, interaction_id, status, refusal_reason, image_count, "
            "message_id, reroll_of FROM jobs ORDER BY id"
        ).fetchall()
    return [dict(r) for r in rows]


async def wait_ledger_quiet(db: Path, within: float) -> list[dict[str, Any]]:
    """Job rows once none is queued or running (or after `within` seconds)."""
    deadline = time.perf_counter() + within
    while True:
        rows = await asyncio.to_thread(read_jobs, db)
        if not any(r["status"] in ("queued", "running") for r in rows):
            return rows
        if time.perf_counter() > deadline:
            return rows
        await asyncio.sleep(0.5)


def read_lag(path: Path | None) -> list[tuple[float, float]]:
    if path is None or not path.exists():
        return []
    samples = []
    for line in path.read_text().splitlines():
        at, _, lag = line.partition(" ")
        with contextlib.suppress(ValueError):
            samples.append((float(at), float(lag)))
    return samples


class PySpy:
    """`py-spy record --nonblocking` on the bot between `start()` and `stop()`."""

    def __init__(self, pid: int, out: Path, rate: int) -> None:
        self.pid = pid
        self.out = out
        self.rate = rate
        self.process: asyncio.subprocess.Process | None = None

    @staticmethod
    def available() -> str | None:
        exe = Path(sys.executable).with_name("py-spy")
        return str(exe) if exe.exists() else shutil.which("py-spy")

    async def start(self) -> bool:
        exe = self.available()
        if exe is None:
            print("profile: py-spy not found (pip install py-spy); skipping", flush=True)
            return False
        self.process = await asyncio.create_subprocess_exec(
            exe,
            "record",
            "--pid",
            str(self.pid),
            "--rate",
            str(self.rate),
            "--nonblocking",  # never pause the bot: that would add loop lag of its own
            "--threads",
            "--format",
            "raw",
            "--output",
            str(self.out),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        return True

    async def stop(self) -> str:
        if self.process is None:
            return ""
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGINT)
        try:
            _, err = await asyncio.wait_for(self.process.communicate(), 60)
        except TimeoutError:
            self.process.kill()
            _, err = await self.process.communicate()
        return err.decode(errors="replace")[-2000:]


def summarize_pyspy(path: Path, rate: int, seconds: float, top: int = 12) -> dict[str, Any]:
    """Per thread: how busy it was, its heaviest functions (inclusive, the bot's and its
    libraries' code, idle waits in `select` left out) and its innermost frames."""
    if not path.exists():
        return {}
    per_thread: collections.Counter[str] = collections.Counter()
    busy: collections.Counter[str] = collections.Counter()
    inclusive: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    leaf: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    innermost: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        thread = next((f for f in frames if f.startswith("thread ")), frames[0])
        frames = [_fn(f) for f in frames if not f.startswith(("thread ", "process "))]
        n = int(count)
        per_thread[thread] += n
        if frames and frames[-1].startswith(IDLE_FRAMES):
            continue  # the loop waiting for work: idle, whatever py-spy thought
        busy[thread] += n
        for name in dict.fromkeys(frames):
            inclusive[thread][name] += n
        if frames:
            leaf[thread][frames[-1]] += n
        ours = [f for f in frames if "(bot/" in f or "(engine/" in f]
        innermost[thread][ours[-1] if ours else "(outside bot/ and engine/)"] += n
    expected = max(rate * seconds, 1)
    threads = []
    for thread, n in busy.most_common(6):
        own = [
            (k, v)
            for k, v in inclusive[thread].most_common()
            if _own_code(k) and v < 0.8 * n  # the thread's roots say nothing
        ]
        threads.append(
            {
                "thread": thread,
                "busy_share_of_wall": n / expected,
                "busy_samples": n,
                "top_inclusive_own_code": [
                    {"function": k, "share_of_busy": v / n} for k, v in own[:top]
                ],
                "top_leaf": [
                    {"function": k, "share_of_busy": v / n}
                    for k, v in leaf[thread].most_common(top)
                ],
                "top_innermost_bot_frame": [
                    {"function": k, "share_of_busy": v / n}
                    for k, v in innermost[thread].most_common(top)
                ],
            }
        )
    return {
        "rate": rate,
        "seconds": seconds,
        "samples": sum(per_thread.values()),
        "threads": threads,
    }


IDLE_FRAMES = ("EpollSelector.select", "Condition.wait", "Event.wait", "Queue.get")


def _fn(frame: str) -> str:
    """`function (path:line)` -> `function (path)`, the line dropped so lines merge."""
    return re.sub(r":\d+\)$", ")", frame.strip())


def _own_code(name: str) -> bool:
    return any(
        part in name
        for part in ("bot/", "engine/", "discord/", "aiohttp/", "sqlalchemy/", "aiosqlite/")
    )


def summarize_stalls(
    path: Path | None, window: tuple[float, float], top: int = 10
) -> dict[str, Any]:
    """What the loop thread was doing while the probe was overdue (from `bench.botprobe`),
    within `window` (unix times)."""
    if path is None or not path.exists():
        return {}
    data = json.loads(path.read_text())
    stacks: list[str] = data.get("stacks", [])
    counts = collections.Counter(
        index for at, index in data.get("samples", []) if window[0] <= at <= window[1]
    )
    samples = sum(counts.values())
    inclusive: collections.Counter[str] = collections.Counter()
    innermost_own: collections.Counter[str] = collections.Counter()
    leaf: collections.Counter[str] = collections.Counter()
    for index, n in counts.items():
        names = [_frame_name(f) for f in stacks[index].split(";")]
        for name in dict.fromkeys(names):
            inclusive[name] += n
        leaf[names[-1]] += n
        own = [nm for nm in names if nm.startswith(("bot/", "engine/"))]
        innermost_own[own[-1] if own else "(no bot/engine frame)"] += n
    per = samples or 1
    heaviest = [
        {"stack": ";".join(stacks[i].split(";")[-8:]), "share": n / per}
        for i, n in counts.most_common(top)
    ]
    return {
        "samples": samples,
        "sample_seconds": data.get("sample_seconds"),
        "threshold_seconds": data.get("threshold_seconds"),
        "top_leaf": [{"function": k, "share": v / per} for k, v in leaf.most_common(top)],
        "top_innermost_bot_frame": [
            {"function": k, "share": v / per} for k, v in innermost_own.most_common(top)
        ],
        "top_inclusive": [
            {"function": k, "share": v / per} for k, v in inclusive.most_common(top * 3)
        ],
        "top_stacks": heaviest,
    }


def summarize_ledger(path: Path | None, window: tuple[float, float]) -> dict[str, Any]:
    """Ledger call and SQL statement durations within `window` (from `bench.botprobe`)."""
    if path is None or not path.exists():
        return {}
    data = json.loads(path.read_text())
    limit = (data.get("pool_size") or 0) + (data.get("pool_overflow") or 0)
    calls: dict[str, list[float]] = collections.defaultdict(list)
    saturated: collections.Counter[str] = collections.Counter()
    for name, at, seconds, in_use in data.get("calls", []):
        if window[0] <= at <= window[1]:
            calls[name].append(seconds)
            if limit and in_use >= limit:
                saturated[name] += 1
    statements: dict[str, list[float]] = collections.defaultdict(list)
    for kind, at, seconds in data.get("statements", []):
        if window[0] <= at <= window[1]:
            statements[kind].append(seconds)
    return {
        "pool_limit": limit or None,
        "calls": {
            name: {**spread(v), "pool_full_at_start": saturated[name]}
            for name, v in sorted(calls.items(), key=lambda kv: -sum(kv[1]))
        },
        "statements": {
            kind: {**spread(v), "total_s": sum(v)}
            for kind, v in sorted(statements.items(), key=lambda kv: -sum(kv[1]))
        },
    }


def _frame_name(frame: str) -> str:
    path, _, rest = frame.partition(":")
    function = rest.rpartition(":")[0]
    return f"{path}:{function}"


async def run(args: argparse.Namespace) -> dict[str, Any]:
    cache = Path(args.model_cache) if args.model_cache else default_cache_dir()
    await asyncio.to_thread(builtin_folder, "builtin:tiny", cache)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="imagine-load-") as tmp_name:
        tmp = Path(tmp_name)
        probe_dir = None if args.plain else tmp
        async with open_world(
            tmp,
            cache,
            guild="Load Club",
            channels=[f"art-{k}" for k in range(args.channels)],
            users=[f"user{i:04d}" for i in range(args.users)],
            default_timeout=30,
            heartbeat_interval_ms=args.heartbeat_ms,
            clean=False,  # the violations are figures here, not failures
        ) as world:
            server = world.server
            ops_port = free_port() if ops_supported() else None
            config = world.configure(
                engine={
                    "max_batch_size": args.batch,
                    "batch_wait_ms": args.batch_wait_ms,
                    "max_queue": max(1024, 4 * args.users),
                },
                quota={"daily_images": 100_000, "max_queued_per_user": 50},
                # The point is throughput and responsiveness, not the per-user flood guard.
                moderation={"commands_per_minute": 0},
                **({"ops": {"listen": f"127.0.0.1:{ops_port}"}} if ops_port else {}),
            )
            metrics_url = f"http://127.0.0.1:{ops_port}/metrics" if ops_port else None
            bot = LoadBot(
                server,
                config,
                token=world.token,
                probe_dir=probe_dir,
                omp_threads=args.omp_threads,
            )
            started = time.perf_counter()
            await bot.start()
            memory = MemorySampler(bot.pid).start()
            profiler: PySpy | None = None
            try:
                await bot.wait_ready(within=300)
                await bot.wait_for_line(r"connected as", within=120)
                ready_s = time.perf_counter() - started
                print(f"bot ready after {ready_s:.1f} s; idling {args.idle:g} s", flush=True)
                idle_start = time.time()
                await asyncio.sleep(args.idle)
                idle_end = time.time()
                startup_hwm = memory.hwm_kb()
                reset = memory.reset_hwm()
                if args.profile:
                    profiler = PySpy(bot.pid, tmp / "pyspy.txt", args.profile_rate)
                    if not await profiler.start():
                        profiler = None
                profile_start = time.perf_counter()
                metrics_before = await scrape(metrics_url)
                channels, users = list(world.channels.values()), list(world.users.values())
                load = Load(server, args, channels, users, random.Random(args.seed))
                print(
                    f"load: {args.users} users, /imagine over {args.duration:g} s "
                    f"({args.steps} steps), buttons and /info",
                    flush=True,
                )
                await load.run()
                load_done = time.time()
                metrics_after = await scrape(metrics_url)
                rows = await wait_ledger_quiet(tmp / "imagine.db", within=60)
                load_hwm = memory.hwm_kb()
                pyspy_log = await profiler.stop() if profiler else ""
                profiled_s = time.perf_counter() - profile_start
            finally:
                code = await bot.stop(within=90)
                memory.stop()
            rows = await asyncio.to_thread(read_jobs, tmp / "imagine.db")
            lag = read_lag(bot.lag_file)
            pyspy = (
                summarize_pyspy(tmp / "pyspy.txt", args.profile_rate, profiled_s)
                if profiler
                else {}
            )
            if args.keep_log:
                RESULTS_LOG.parent.mkdir(parents=True, exist_ok=True)
                RESULTS_LOG.write_text(bot.output + "\n")
            if profiler and args.keep_profile:
                RESULTS_PROFILE.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(tmp / "pyspy.txt", RESULTS_PROFILE)
            return figures(
                args,
                server,
                bot,
                load,
                rows,
                memory,
                lag,
                server.gateway.heartbeat_times,
                pyspy,
                pyspy_log,
                (metrics_before, metrics_after),
                code=code,
                ready_s=ready_s,
                idle=(idle_start, idle_end),
                load_done=load_done,
                startup_hwm=startup_hwm,
                load_hwm=load_hwm if reset else None,
                loadavg=load_before,
            )


RESULTS_PROFILE = ROOT / "bench" / "results" / "load_bench.pyspy.txt"
RESULTS_LOG = ROOT / "bench" / "results" / "load_bench.bot.log"


def figures(
    args: argparse.Namespace,
    server: DiscordTestServer,
    bot: LoadBot,
    load: Load,
    rows: list[dict[str, Any]],
    memory: MemorySampler,
    lag: list[tuple[float, float]],
    beats: list[float],
    pyspy: dict[str, Any],
    pyspy_log: str,
    metrics: tuple[dict[str, float], dict[str, float]],
    *,
    code: int,
    ready_s: float,
    idle: tuple[float, float],
    load_done: float,
    startup_hwm: int,
    load_hwm: int | None,
    loadavg: tuple[float, float, float],
) -> dict[str, Any]:
    clock = server.clock
    to_wall = clock.time() - clock.now()  # server-clock seconds -> unix time
    delivered = load.deliveries()

    # First answers, every interaction the users sent.
    every: list[tuple[str, Interaction]] = [(a.kind, a.interaction) for a in load.asks]
    every = [(k, i) for k, i in every if k == "imagine"]
    every += [(b, i) for b, i in load.clicks] + [("info", i) for i in load.infos]
    first: dict[str, list[float]] = collections.defaultdict(list)
    unanswered = 0
    for kind, interaction in every:
        if interaction.callbacks:
            first[kind].append(interaction.callbacks[0].at)
        else:
            unanswered += 1
    all_first = [v for values in first.values() for v in values]
    late = sum(1 for v in all_first if v > DISCORD_DEADLINE)

    # Command to delivered image.
    to_image: list[float] = []
    last_delivery = load.started_wall
    for ask in load.asks:
        job_id = load.job_id_of(ask)
        if job_id is None or job_id not in delivered:
            continue
        message = delivered[job_id][0]
        assert message.created_at is not None
        at = message.created_at.timestamp()
        last_delivery = max(last_delivery, at)
        to_image.append(at - (ask.interaction.created_at + to_wall))

    # Event-loop lag while generating: first command to the last delivered image.
    window = (load.started_wall, max(last_delivery, load.started_wall + 1))
    lag_load = [v for at, v in lag if window[0] <= at <= window[1]]
    lag_idle = [v for at, v in lag if idle[0] <= at <= idle[1]]
    stalls = summarize_stalls(bot.stall_file, window)
    ledger = summarize_ledger(bot.ledger_file, window)
    interval = args.heartbeat_ms / 1000
    gaps = [b - a - interval for a, b in itertools.pairwise(beats) if window[0] <= b <= window[1]]

    # Accounting: requests vs rows vs deliveries.
    status = collections.Counter(r["status"] for r in rows)
    by_interaction = collections.Counter(r["interaction_id"] for r in rows)
    done_ids = {r["id"] for r in rows if r["status"] == "done"}
    row_by_id = {r["id"]: r for r in rows}
    delivered_ids = set(delivered)
    doubled = {j: len(m) for j, m in delivered.items() if len(m) > 1}
    requested = len(load.asks)
    images_posted = sum(len(m[0].attachments) for m in delivered.values())
    images_done = sum(row_by_id[j]["image_count"] for j in done_ids)
    wrong_message = [
        j
        for j in done_ids & delivered_ids
        if row_by_id[j]["message_id"] not in {m.id for m in delivered[j]}
    ]
    rows_by_interaction = {r["interaction_id"]: r for r in rows}
    asked_ids = {a.interaction.id for a in load.asks}
    no_row = [a for a in load.asks if a.interaction.id not in rows_by_interaction]
    failed = [a for a in no_row if failed_interaction(a.interaction, grace=0)]
    accounting = {
        "requested": requested,
        "failed_interactions": len(failed),
        "requests_without_row": len(no_row) - len(failed),
        "rows_without_request": sum(1 for r in rows if r["interaction_id"] not in asked_ids),
        "requested_imagine": sum(1 for a in load.asks if a.kind == "imagine"),
        "requested_reroll": sum(1 for a in load.asks if a.kind == "reroll"),
        "db_rows": len(rows),
        "db_status": dict(status),
        "delivered_jobs": len(delivered_ids),
        "delivered_images": images_posted,
        "done_rows": len(done_ids),
        "done_images": images_done,
        "doubled_deliveries": doubled,
        "rows_per_interaction_max": max(by_interaction.values(), default=0),
        "delivered_not_done": sorted(delivered_ids - done_ids),
        "done_not_delivered": sorted(done_ids - delivered_ids),
        "done_with_other_message_id": sorted(wrong_message),
        "cancel_acknowledged": len(load.cancel_acked),
        "clicks": dict(collections.Counter(b for b, _ in load.clicks)),
        "clicks_skipped": dict(load.skipped_clicks),
        "unsettled": sum(1 for a in load.asks if not load.settled(a, delivered)),
    }
    odd = set(accounting["delivered_not_done"]) | set(accounting["done_not_delivered"])
    odd |= set(doubled) | set(wrong_message)
    accounting["diagnosis"] = {
        str(j): diagnose(load, bot, j, row_by_id.get(j)) for j in sorted(odd)
    }
    accounting["consistent"] = (
        requested - len(failed) == len(rows)
        and accounting["requests_without_row"] == 0
        and accounting["rows_without_request"] == 0
        and len(done_ids) == len(delivered_ids)
        and not doubled
        and not accounting["delivered_not_done"]
        and not accounting["done_not_delivered"]
        and not wrong_message
        and accounting["rows_per_interaction_max"] <= 1
        and status.get("queued", 0) + status.get("running", 0) == 0
        and images_posted == images_done
    )

    idle_rss = memory.between(*idle)
    load_rss = memory.between(load.started_wall, load_done)
    kb = 1 / 1024
    mem = {
        "processes": len(memory.processes),
        "idle_rss_mib": (sum(idle_rss) / len(idle_rss) * kb) if idle_rss else None,
        "startup_peak_mib": startup_hwm * kb,
        "load_peak_rss_sampled_mib": max(load_rss) * kb if load_rss else None,
        "load_peak_hwm_mib": load_hwm * kb if load_hwm is not None else None,
    }
    elapsed = max(last_delivery - load.started_wall, 1e-9)
    first_p99 = pct(all_first, 99)
    lag_p99 = pct(lag_load, 99) if lag_load else pct(gaps, 99)  # --plain: heartbeats only
    violations = collections.Counter(v.kind for v in server.all_violations())
    log_levels = collections.Counter(
        m.group(1) for line in bot.lines if (m := re.search(r" (WARNING|ERROR|CRITICAL) ", line))
    )
    problems = [
        line[:300]
        for line in bot.lines
        if re.search(r" (WARNING|ERROR|CRITICAL) ", line) or EXCEPTION_LINE.match(line)
    ]
    return {
        "benchmark": "load",
        "machine": {**machine(), "loadavg_before": [round(x, 2) for x in loadavg]},
        "settings": {k: v for k, v in vars(args).items() if k not in ("readme",)},
        "bot_exit_code": code,
        "ready_seconds": ready_s,
        "first_answer_s": {**spread(all_first), "over_3s": late, "unanswered": unanswered},
        "first_answer_by_kind_s": {k: spread(v) for k, v in sorted(first.items())},
        "loop_lag_s": {
            "source": "bench.botprobe" if lag_load else "heartbeat gaps (estimate)",
            "load": spread(lag_load),
            "idle": spread(lag_idle),
            "heartbeat_gap_load": spread(gaps),
        },
        "command_to_image_s": spread(to_image),
        "images_per_s": images_posted / elapsed,
        "load_seconds": elapsed,
        "accounting": accounting,
        "memory": mem,
        "rate_limited_429": server.rate_limited_count,
        "violations": dict(violations),
        "bot_log_levels": dict(log_levels),
        "bot_log_problems": problems[:60],
        "goals": {
            "first_answer_p99_lt_500ms": first_p99 is not None
            and first_p99 < GOAL_FIRST_ANSWER_P99,
            "loop_lag_p99_lt_100ms": lag_p99 is not None and lag_p99 < GOAL_LOOP_LAG_P99,
        },
        "bot_metrics": {
            "loop_lag_s": bot_histogram(*metrics, "imagine_event_loop_lag_seconds"),
            "first_answer_s": bot_histogram(*metrics, "imagine_first_answer_seconds"),
        },
        "loop_stalls": stalls,
        "ledger": ledger,
        "pyspy": pyspy,
        "pyspy_log": pyspy_log.strip()[-500:],
    }


def diagnose(load: Load, bot: LoadBot, job_id: int, row: dict[str, Any] | None) -> dict[str, Any]:
    """What the server saw of one job, and what the bot logged about it."""
    told = [
        f"{kind}: " + interaction.describe()
        for kind, interaction in [("ask", a.interaction) for a in load.asks if a.job_id == job_id]
        + [(b, i) for b, i in load.clicks if f":{job_id}" in (i.custom_id or "")]
    ]
    pattern = re.compile(rf"\b(?:job|Job #){job_id}\b")
    return {
        "row": row,
        "interactions": told,
        "bot_log": [line for line in bot.lines if pattern.search(line)][-20:],
    }


# -- output ------------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1000:.0f} ms"


def _s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} s"


def format_mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} MiB"


def _goal(met: bool) -> str:
    return "met" if met else "**missed**"


def caption(result: dict[str, Any]) -> str:
    m, s = result["machine"], result["settings"]
    device = m.get("gpu") or f"CPU ({m['cores']} cores)"
    return (
        f"Bot under load: {s['users']} users, one `/imagine` each over {s['duration']:g} s "
        f"(Poisson, seed {s['seed']}), {s['steps']} steps, builtin:tiny 64x64, batch "
        f"{s['batch']}; {s['info_share']:.0%} also run `/info`, {s['cancel_share']:.0%} press "
        f"Cancel, {s['reroll_share']:.0%} press Reroll; {s['channels']} channel(s), SQLite, "
        f"OMP_NUM_THREADS={s['omp_threads']}" + f". {device}, load average "
        f"{m['loadavg_before'][0]} before the run, torch {m.get('torch')}, {m['date']}."
    )


def table(result: dict[str, Any]) -> str:
    first, lag = result["first_answer_s"], result["loop_lag_s"]
    image, acc, mem = result["command_to_image_s"], result["accounting"], result["memory"]
    goals = result["goals"]
    rows = [
        [
            "time to first answer (p50 / p99 / max)",
            f"{_ms(first['p50'])} / {_ms(first['p99'])} / {_ms(first['max'])} "
            f"({first['n']} interactions, {first['over_3s']} over 3 s, "
            f"{first['unanswered']} unanswered)",
            f"p99 < 500 ms: {_goal(goals['first_answer_p99_lt_500ms'])}",
        ],
        [
            "first answer p99 by kind",
            ", ".join(
                f"{KIND_NAMES.get(k, k)} {_ms(v['p99'])} (n={v['n']})"
                for k, v in result["first_answer_by_kind_s"].items()
            ),
            "Discord's limit: 3 s",
        ],
        [
            "event-loop lag while generating (p50 / p99 / max)",
            f"{_ms(lag['load']['p50'])} / {_ms(lag['load']['p99'])} / {_ms(lag['load']['max'])}"
            f" (20 ms probe, {lag['load']['n']} samples)",
            f"p99 < 100 ms: {_goal(goals['loop_lag_p99_lt_100ms'])}"
            + ("" if lag["load"]["n"] else " (from the heartbeat delay)"),
        ],
        [
            "heartbeat delay while generating (p50 / p99 / max)",
            f"{_ms(lag['heartbeat_gap_load']['p50'])} / {_ms(lag['heartbeat_gap_load']['p99'])}"
            f" / {_ms(lag['heartbeat_gap_load']['max'])}",
            "outside estimate of loop lag",
        ],
        [
            "the bot's own metrics during the load (bucket bounds)",
            bot_metrics_text(result.get("bot_metrics") or {}),
            "`/metrics` with `[ops] listen`",
        ],
        [
            "command to delivered image (p50 / p95 / max)",
            f"{_s(image['p50'])} / {_s(image['p95'])} / {_s(image['max'])}",
            f"{result['images_per_s']:.2f} images/s over {result['load_seconds']:.0f} s",
        ],
        [
            "jobs requested / database rows / delivered",
            f"{acc['requested']} / {acc['db_rows']} / {acc['delivered_jobs']} "
            f"({acc['requested_reroll']} rerolls"
            + (
                f", {acc['failed_interactions']} never acknowledged in time"
                if acc["failed_interactions"]
                else ""
            )
            + "; rows: "
            + ", ".join(f"{n} {k}" for k, n in sorted(acc["db_status"].items()))
            + ")",
            "consistent (nothing lost or doubled)" if acc["consistent"] else inconsistency(acc),
        ],
        [
            "memory: bot RSS idle / peak at start-up / peak under load",
            f"{format_mib(mem['idle_rss_mib'])} / {format_mib(mem['startup_peak_mib'])} / "
            f"{format_mib(mem['load_peak_hwm_mib'] or mem['load_peak_rss_sampled_mib'])}",
            f"{mem['processes']} process(es)",
        ],
    ]
    return caption(result) + "\n\n" + markdown_table(["measure", "value", "note"], rows)


def _ledger_calls(calls: dict[str, Any]) -> list[tuple[str, Any]]:
    """The six costliest ledger calls, and `get_job` (what Cancel and Reroll wait for)."""
    shown = list(calls.items())[:6]
    if "get_job" in calls and "get_job" not in dict(shown):
        shown.append(("get_job", calls["get_job"]))
    return shown


def bot_metrics_text(metrics: dict[str, Any]) -> str:
    parts = []
    for key, what in (("loop_lag_s", "loop lag (1 s timer)"), ("first_answer_s", "first answer")):
        found = metrics.get(key)
        if found and found["count"]:
            parts.append(
                f"{what} p99 <= {_ms(found['p99_at_most'])}, mean {_ms(found['mean'])} "
                f"(n={found['count']:.0f})"
            )
    return "; ".join(parts) or "not available (no `[ops] listen` or no metric)"


KIND_NAMES = {"imagine": "/imagine", "info": "/info", "cancel": "Cancel", "reroll": "Reroll"}


def inconsistency(acc: dict[str, Any]) -> str:
    parts = []
    named = {
        "delivered_not_done": "delivered but not `done` in the ledger",
        "done_not_delivered": "`done` but never delivered",
        "done_with_other_message_id": "`done` with another message id",
    }
    for key, what in named.items():
        if acc[key]:
            status = ""
            if key == "delivered_not_done":
                rows = [acc["diagnosis"].get(str(j), {}).get("row") or {} for j in acc[key]]
                found = collections.Counter(r.get("status") for r in rows)
                status = " (" + ", ".join(f"{n} {k}" for k, n in found.items()) + ")"
            jobs = ", ".join(f"#{j}" for j in acc[key][:6])
            parts.append(f"{len(acc[key])} job(s) {what}{status}: {jobs}")
    if acc["doubled_deliveries"]:
        parts.append(f"{len(acc['doubled_deliveries'])} job(s) delivered twice")
    if acc["requests_without_row"]:
        parts.append(f"{acc['requests_without_row']} answered request(s) without a row")
    if acc["rows_without_request"]:
        parts.append(f"{acc['rows_without_request']} row(s) no user asked for")
    if acc["rows_per_interaction_max"] > 1:
        parts.append("an interaction has several rows")
    active = acc["db_status"].get("queued", 0) + acc["db_status"].get("running", 0)
    if active:
        parts.append(f"{active} job(s) still queued/running")
    return "**inconsistent**: " + "; ".join(parts or ["image counts differ"])


def profile_text(result: dict[str, Any]) -> str:
    lines = []
    stalls = result.get("loop_stalls") or {}
    if stalls.get("samples"):
        lines.append(
            f"Loop stalls (loop > {stalls['threshold_seconds'] * 1000:.0f} ms late): "
            f"{stalls['samples']} samples of {stalls['sample_seconds'] * 1000:.0f} ms; "
            "innermost bot frame: "
            + ", ".join(
                f"{e['function']} {e['share']:.0%}" for e in stalls["top_innermost_bot_frame"][:5]
            )
            + "; innermost frame: "
            + ", ".join(f"{e['function']} {e['share']:.0%}" for e in stalls["top_leaf"][:5])
        )
    ledger = result.get("ledger") or {}
    if ledger.get("calls"):
        lines.append(
            f"Ledger calls (p50 / p99 / max; pool of {ledger['pool_limit']} connections): "
            + ", ".join(
                f"{name} {_ms(c['p50'])} / {_ms(c['p99'])} / {_ms(c['max'])}"
                + (
                    f" ({c['pool_full_at_start']} began with the pool full)"
                    if c["pool_full_at_start"]
                    else ""
                )
                for name, c in _ledger_calls(ledger["calls"])
            )
            + "; slowest SQL: "
            + ", ".join(
                f"{kind} p99 {_ms(c['p99'])} max {_ms(c['max'])}"
                for kind, c in sorted(
                    ledger["statements"].items(), key=lambda kv: -(kv[1]["p99"] or 0)
                )[:3]
            )
        )
    pyspy = result.get("pyspy") or {}
    for thread in pyspy.get("threads", [])[:2]:
        lines.append(
            f"py-spy, {thread['thread']}: busy {thread['busy_share_of_wall']:.0%} of the time; "
            + ", ".join(
                f"{e['function']} {e['share_of_busy']:.0%}"
                for e in thread["top_innermost_bot_frame"][:6]
            )
            + " (innermost bot/engine frame)"
        )
    return "\n".join(f"- {line}" for line in lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
        "--docs",
        "--readme",
        dest="readme",
        action="store_true",
        help="refresh its table on docs/benchmarks.md",
    )
    return p


def main() -> None:
    args = parser().parse_args()
    started = time.perf_counter()
    result = asyncio.run(run(args))
    result["wall_seconds"] = time.perf_counter() - started
    text = table(result)
    profile = profile_text(result)
    print(text)
    if profile:
        print("\nWhere the time goes:\n" + profile)
    for name, met in result["goals"].items():
        print(f"goal {name}: {'met' if met else 'MISSED'}")
    print(f"run took {result['wall_seconds']:.0f} s")
    path = save("load_bench", result)
    print(f"wrote {path.relative_to(ROOT)}")
    if args.readme:
        update_docs("load", text + ("\n\n" + profile if profile else ""))
        print("updated docs/benchmarks.md")


if __name__ == "__main__":
    main()
