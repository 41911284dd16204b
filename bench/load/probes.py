"""What is measured on the bot while it runs: the bot process under `bench.botprobe`, the
RSS of its process tree, py-spy, the bot's own metrics (`[ops] listen`) and its ledger rows.

Shared by `bench.load` and `bench.picture_burst`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, make_url, select

from bot.ledger import ACTIVE_STATUSES
from bot.ledger.models import Job
from bot.ops.metrics import Metrics
from engine.tiny import builtin_folder, default_cache_dir
from testkit.config import database_url
from testkit.discord_server import DiscordTestServer
from testkit.ops import Samples, ops_address, read_metrics
from testkit.process import BotProcess

from .. import botprobe
from ..report import ROOT

__all__ = [
    "FIRST_ANSWER",
    "LOOP_LAG",
    "LoopLag",
    "MemorySampler",
    "ProbedBot",
    "PySpy",
    "bot_histogram",
    "database_file",
    "read_jobs",
    "read_lag",
    "tiny_cache",
    "wait_ledger_quiet",
]

_METRICS = Metrics()
#: The bot's own histograms (`bot.ops.Metrics`), by the names it exports them under.
LOOP_LAG = _METRICS.loop_lag_seconds.describe()[0].name
FIRST_ANSWER = _METRICS.first_answer_seconds.describe()[0].name
#: The line the bot logs for each result it posted (what the end-to-end tests wait for).
DELIVERED_LINE = re.compile(r"job \d+: delivered")


# -- the bot process ---------------------------------------------------------------------------


class ProbedBot(BotProcess):
    """`BotProcess` running the bot under `bench.botprobe` (files in `probe_dir`), or plain
    (`probe_dir` None); `ops` is the base URL of its `/metrics` once `ready` read it."""

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
        self.ops: str | None = None
        self.started_at = 0.0
        env = {"OMP_NUM_THREADS": str(omp_threads)}
        if probe_dir is None:
            super().__init__(server, config, token=token, env=env)
            return
        env |= botprobe.probe_env(probe_dir)
        command = [sys.executable, "-m", "bench.botprobe"]
        super().__init__(server, config, token=token, command=command, pythonpath=[ROOT], env=env)

    def probe_file(self, variable: str) -> Path | None:
        """The file `bench.botprobe` writes for `variable` (`botprobe.LAG_FILE`...)."""
        return self.probe_dir / botprobe.FILES[variable] if self.probe_dir else None

    async def start(self) -> ProbedBot:
        self.started_at = time.perf_counter()
        await super().start()
        return self

    async def ready(self) -> float:
        """Once started: wait until the bot is connected and its `[ops] listen` endpoint is
        known (`ops`); return the seconds since `start`."""
        await self.wait_ready(within=300)
        await self.wait_for_line(r"connected as", within=120)
        ready_s = time.perf_counter() - self.started_at
        self.ops = await ops_address(self)
        return ready_s

    async def metrics(self) -> Samples:
        """The bot's `/metrics` now (empty before `ready`)."""
        return await read_metrics(self.ops) if self.ops else {}

    def logged_deliveries(self) -> int:
        return sum(1 for line in self.lines if DELIVERED_LINE.search(line))


async def tiny_cache(folder: str) -> Path:
    """The model cache (`folder`, or the default one) with `builtin:tiny` built in it."""
    cache = Path(folder) if folder else default_cache_dir()
    await asyncio.to_thread(builtin_folder, "builtin:tiny", cache)
    return cache


def bot_histogram(before: Samples, after: Samples, name: str) -> dict[str, Any] | None:
    """Observations of the bot's histogram `name` between two readings: count, mean and the
    bucket bounds holding p50, p99 and the largest (the bot exports buckets, not samples)."""
    buckets = sorted(
        (float(dict(labels)["le"]), value - before.get((key, labels), 0.0))
        for (key, labels), value in after.items()
        if key == f"{name}_bucket"
    )
    if not buckets:
        return None
    count = buckets[-1][1]
    sum_key = (f"{name}_sum", ())
    total = after.get(sum_key, 0.0) - before.get(sum_key, 0.0)

    def bound(q: float) -> float | None:
        if count <= 0:
            return None
        return next(b for b, c in buckets if c >= q * count)

    return {
        "count": count,
        "mean": total / count if count else None,
        "p50_at_most": bound(0.5),
        "p99_at_most": bound(0.99),
        "max_at_most": bound(1.0),
    }


def read_lag(path: Path | None) -> list[tuple[float, float]]:
    """`bench.botprobe`'s loop-lag samples: (unix time, seconds late)."""
    if path is None or not path.exists():
        return []
    samples = []
    for line in path.read_text().splitlines():
        at, _, lag = line.partition(" ")
        with contextlib.suppress(ValueError):
            samples.append((float(at), float(lag)))
    return samples


class LoopLag:
    """How late this process's own event loop wakes from a `every`-second sleep: the test
    server and the simulated users share it, so a late loop here delays what they record
    (a first answer, a "queued" message) and the figures would measure the benchmark."""

    def __init__(self, every: float = 0.02) -> None:
        self.every = every
        self.samples: list[tuple[float, float]] = []  # (unix time, seconds late)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> LoopLag:
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> list[tuple[float, float]]:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        return self.samples

    async def _run(self) -> None:
        while True:
            start = time.perf_counter()
            await asyncio.sleep(self.every)  # the probe's interval: how late it wakes is the lag
            late = time.perf_counter() - start - self.every
            self.samples.append((time.time(), max(late, 0.0)))


# -- the ledger --------------------------------------------------------------------------------

#: The job columns the accounting reads, by the bot's own table (`bot.ledger.models.Job`).
JOB_COLUMNS = (
    Job.id,
    Job.user_id,
    Job.interaction_id,
    Job.status,
    Job.refusal_reason,
    Job.image_count,
    Job.message_id,
    Job.reroll_of,
)


def database_file(tmp: Path) -> Path:
    """The SQLite file of a world's bot (`testkit.config.database_url`)."""
    name = make_url(database_url(tmp)).database
    assert name is not None
    return Path(name)


def read_jobs(db: Path) -> list[dict[str, Any]]:
    """The ledger's job rows, read beside the running bot (read-only)."""
    engine = create_engine(
        "sqlite://",
        creator=lambda: sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10),
    )
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(*JOB_COLUMNS).order_by(Job.id)).mappings()
            return [dict(r) for r in rows]
    finally:
        engine.dispose()


async def wait_ledger_quiet(db: Path, within: float) -> list[dict[str, Any]]:
    """Job rows once none is queued or running (or after `within` seconds)."""
    deadline = time.perf_counter() + within
    while True:
        rows = await asyncio.to_thread(read_jobs, db)
        if not any(r["status"] in ACTIVE_STATUSES for r in rows):
            return rows
        if time.perf_counter() > deadline:
            return rows
        await asyncio.sleep(0.5)


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


# -- py-spy ------------------------------------------------------------------------------------


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
