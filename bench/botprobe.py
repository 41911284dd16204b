"""`imagine-bot` with an event-loop lag probe, for `bench.load` and `bench.picture_burst`.

    python -m bench.botprobe run --config config.toml      # same arguments as imagine-bot

The bot's own loop-lag metric (a 50 ms timer) keeps buckets only; this wrapper installs a
finer probe, every sample kept, before calling the unchanged `bot.cli.main`: a task on the
bot's event loop sleeps `INTERVAL` seconds in a loop and records how late it wakes up (the
delay any ready callback, e.g. an INTERACTION_CREATE, waits for the loop). Samples go to
`$IMAGINE_BENCH_LAG_FILE` as "unix_time lag_seconds" lines.

While the loop is late by more than `STALL` seconds, a watchdog thread samples the loop
thread's Python stack every `SAMPLE` seconds; the time-stamped stacks (what the loop was doing,
or waiting for, while it was late) go to `$IMAGINE_BENCH_STALL_FILE` as JSON when the bot exits.

With `$IMAGINE_BENCH_GC_FILE` set, every collection of CPython's cyclic garbage collector
(when, how long, which generation: it holds the GIL, so it stalls the event loop) is kept and
written as JSON when the bot exits.

With `$IMAGINE_BENCH_LEDGER_FILE` set, every public `Ledger` call and every SQL statement is
timed (with the connections checked out of the pool when the call began), to tell waiting
for the database apart from waiting for the loop; written as JSON when the bot exits.

It runs the bot's code unchanged.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import gc
import json
import os
import re
import sys
import threading
import time
from pathlib import Path
from types import FrameType

#: Where a run under the probe writes: environment variable -> file name in its folder.
LAG_FILE = "IMAGINE_BENCH_LAG_FILE"
STALL_FILE = "IMAGINE_BENCH_STALL_FILE"
LEDGER_FILE = "IMAGINE_BENCH_LEDGER_FILE"
GC_FILE = "IMAGINE_BENCH_GC_FILE"
FILES = {
    LAG_FILE: "lag.txt",
    STALL_FILE: "stalls.json",
    LEDGER_FILE: "ledger.json",
    GC_FILE: "gc.json",
}

INTERVAL = float(os.environ.get("IMAGINE_BENCH_LAG_INTERVAL", "0.02"))
STALL = float(os.environ.get("IMAGINE_BENCH_STALL", "0.02"))
SAMPLE = 0.005
FLUSH_EVERY = 1.0


class LoopProbe:
    def __init__(self, lag_file: Path, stall_file: Path | None) -> None:
        self.lag_file = lag_file
        self.stall_file = stall_file
        self.expected: float | None = None  # perf_counter time the probe should wake up
        self.thread_id = threading.get_ident()
        self.stacks: dict[str, int] = {}  # collapsed stack -> index
        self.stall_samples: list[tuple[float, int]] = []  # (unix time, stack index)
        self._stop = threading.Event()

    async def run(self) -> None:
        buffered: list[str] = []
        last_flush = time.perf_counter()
        with self.lag_file.open("a") as out:
            try:
                while True:
                    start = time.perf_counter()
                    self.expected = start + INTERVAL
                    await asyncio.sleep(INTERVAL)
                    now = time.perf_counter()
                    self.expected = None
                    buffered.append(f"{time.time():.4f} {now - start - INTERVAL:.5f}\n")
                    if now - last_flush >= FLUSH_EVERY:
                        out.write("".join(buffered))
                        out.flush()
                        buffered.clear()
                        last_flush = now
            finally:
                out.write("".join(buffered))
                self._stop.set()
                self.dump_stalls()
                for trace in TRACES:
                    trace.dump()

    def watchdog(self) -> None:
        """Sample the loop thread's stack while the probe is overdue (a blocked loop)."""
        pause = SAMPLE
        while not self._stop.wait(pause):
            expected = self.expected
            now = time.perf_counter()
            if expected is None or now - expected < STALL:  # on time: sleep until it is due
                pause = SAMPLE if expected is None else max(SAMPLE, expected + STALL - now)
                continue
            pause = SAMPLE
            frame = sys._current_frames().get(self.thread_id)
            if frame is not None:
                stack = _collapse(frame)
                index = self.stacks.setdefault(stack, len(self.stacks))
                self.stall_samples.append((round(time.time(), 3), index))

    def dump_stalls(self) -> None:
        if self.stall_file is None:
            return
        payload = {
            "sample_seconds": SAMPLE,
            "threshold_seconds": STALL,
            "stacks": list(self.stacks),
            "samples": self.stall_samples,
        }
        with contextlib.suppress(OSError):
            self.stall_file.write_text(json.dumps(payload, indent=1))


def _collapse(frame: FrameType | None, depth: int = 40) -> str:
    """`outer;...;inner` frames as `file:function:line`, innermost last."""
    parts: list[str] = []
    while frame is not None and len(parts) < depth:
        code = frame.f_code
        parts.append(f"{_short(code.co_filename)}:{code.co_name}:{frame.f_lineno}")
        frame = frame.f_back
    return ";".join(reversed(parts))


def _short(path: str) -> str:
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1]
    stdlib = re.search(r"/lib/python3\.\d+/(.*)", path)
    if stdlib:
        return stdlib.group(1)
    with contextlib.suppress(ValueError):
        return str(Path(path).resolve().relative_to(Path(__file__).resolve().parents[1]))
    return path


class LedgerTrace:
    """Durations of `Ledger` calls and of SQL statements (unix start, seconds)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.calls: list[tuple[str, float, float, int]] = []  # name, start, seconds, in use
        self.statements: list[tuple[str, float, float]] = []  # kind, start, seconds
        self.pool_size: int | None = None
        self.pool_overflow: int | None = None

    def install(self) -> None:
        import functools
        import inspect

        from sqlalchemy import event

        from bot.ledger import store

        trace = self
        engines: list[object] = []
        make_engine = store.create_engine

        def create_engine(*args: object, **kwargs: object) -> object:
            engine = make_engine(*args, **kwargs)  # type: ignore[arg-type]
            engines.append(engine)
            pool = engine.pool
            trace.pool_size = getattr(pool, "size", lambda: None)()
            trace.pool_overflow = getattr(pool, "_max_overflow", None)
            sync = engine.sync_engine

            @event.listens_for(sync, "before_cursor_execute")
            def before(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
                conn.info.setdefault("bench_started", []).append((time.time(), time.perf_counter()))

            @event.listens_for(sync, "after_cursor_execute")
            def after(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
                started = conn.info.get("bench_started")
                if started:
                    wall, perf = started.pop()
                    trace.statements.append(
                        (_statement_kind(statement), wall, time.perf_counter() - perf)
                    )

            return engine

        store.create_engine = create_engine  # type: ignore[assignment]

        def in_use() -> int:
            pool = getattr(engines[0], "pool", None) if engines else None
            return int(getattr(pool, "checkedout", lambda: -1)())

        def timed(name: str, method):  # type: ignore[no-untyped-def]
            @functools.wraps(method)
            async def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
                busy = in_use()
                wall, perf = time.time(), time.perf_counter()
                try:
                    return await method(*args, **kwargs)
                finally:
                    trace.calls.append((name, wall, time.perf_counter() - perf, busy))

            return wrapper

        for name, method in inspect.getmembers(store.Ledger, inspect.iscoroutinefunction):
            if not name.startswith("_"):
                setattr(store.Ledger, name, timed(name, method))

    def dump(self) -> None:
        payload = {
            "pool_size": self.pool_size,
            "pool_overflow": self.pool_overflow,
            "calls": self.calls,
            "statements": self.statements,
        }
        with contextlib.suppress(OSError):
            self.path.write_text(json.dumps(payload))


def _statement_kind(statement: str) -> str:
    words = statement.split()
    head = " ".join(words[:2]).upper()
    if head.startswith("SELECT"):
        table = re.search(r"\bFROM\s+(\w+)", statement, re.I)
        return f"SELECT {table.group(1) if table else ''}".strip()
    if head.startswith(("UPDATE", "INSERT", "DELETE")):
        table = re.search(r"(?:UPDATE|INTO|FROM)\s+(\w+)", statement, re.I)
        return f"{words[0].upper()} {table.group(1) if table else ''}".strip()
    return head


TRACES: list[LedgerTrace] = []


class GcTrace:
    """Every collection of the cyclic garbage collector: (unix time it began, seconds,
    generation). It runs in whichever thread made the object that set it off, holding the
    GIL, so its start and end are never another collection's."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.collections: list[tuple[float, float, int]] = []
        self._began = (0.0, 0.0)  # (unix time, perf_counter) of the collection under way

    def install(self) -> None:
        gc.callbacks.append(self._callback)
        atexit.register(self.dump)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = (time.time(), time.perf_counter())
            return
        at, began = self._began
        self.collections.append((at, time.perf_counter() - began, info["generation"]))

    def dump(self) -> None:
        self.path.write_text(json.dumps({"collections": self.collections}))


def install(lag_file: Path, stall_file: Path | None) -> None:
    """Start the probe on the first event loop created in this thread (the bot's)."""
    base = asyncio.get_event_loop_policy()
    installed = False

    class ProbePolicy(type(base)):  # type: ignore[misc]
        def new_event_loop(self) -> asyncio.AbstractEventLoop:
            nonlocal installed
            loop = super().new_event_loop()
            if not installed and threading.current_thread() is threading.main_thread():
                installed = True
                probe = LoopProbe(lag_file, stall_file)
                loop.call_soon(lambda: loop.create_task(probe.run(), name="bench-loop-probe"))
                threading.Thread(target=probe.watchdog, name="bench-stall", daemon=True).start()
            return loop

    asyncio.set_event_loop_policy(ProbePolicy())


def probe_env(folder: Path) -> dict[str, str]:
    """The environment that makes a run of this module write all its files in `folder`."""
    return {variable: str(folder / name) for variable, name in FILES.items()}


def main() -> int:
    lag = os.environ.get(LAG_FILE)
    stall = os.environ.get(STALL_FILE)
    ledger = os.environ.get(LEDGER_FILE)
    collections = os.environ.get(GC_FILE)
    if collections:
        GcTrace(Path(collections)).install()
    if lag:
        install(Path(lag), Path(stall) if stall else None)
    if ledger:
        trace = LedgerTrace(Path(ledger))
        trace.install()
        TRACES.append(trace)
        atexit.register(trace.dump)
    from bot.cli import main as bot_main

    return bot_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
