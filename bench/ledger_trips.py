"""The ledger on SQLite with SQLAlchemy's own aiosqlite adapter (four trips to the connection's
thread per statement) against `bot/ledger/sqlite_driver.py` (one), side by side in one run:
reservations and `/info` reads one after another on a fresh migrated file, best of three.

    OMP_NUM_THREADS=1 python -m bench.ledger_trips
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import AsyncAdapt_aiosqlite_dbapi

from bot.ledger import Ledger, QuotaPolicy, create_engine, upgrade_to_head
from testkit.jobs import GUILD, job_request

from .report import machine, save


async def _run(stock: bool, calls: int) -> float:
    """Seconds for `calls` reservations, each followed by its user's `/info` read."""
    folder = Path(tempfile.mkdtemp(prefix="ledger-trips-"))
    url = f"sqlite+aiosqlite:///{folder / 'ledger.db'}"
    try:
        await upgrade_to_head(url)
        extra: dict[str, Any] = {}
        if stock:
            extra["module"] = AsyncAdapt_aiosqlite_dbapi(aiosqlite, sqlite3)
        engine = create_engine(url, **extra)
        ledger = Ledger(engine, QuotaPolicy(daily_images=10**6, max_queued_per_user=10**6))
        await ledger.reserve(job_request(user_id=1))  # connections opened, statements compiled
        start = time.perf_counter()
        for n in range(calls):
            await ledger.reserve(job_request(user_id=1000 + n % 50))
            await ledger.user_status(GUILD, 1000 + n % 50)
        seconds = time.perf_counter() - start
        await ledger.close()
        await engine.dispose()
        return seconds
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def measure(calls: int, rounds: int) -> dict[str, Any]:
    stock: list[float] = []
    one_trip: list[float] = []
    for _ in range(rounds):  # interleaved, so both see the same machine
        stock.append(await _run(True, calls))
        one_trip.append(await _run(False, calls))
    return {
        "benchmark": "ledger_trips",
        "machine": machine(),
        "calls": calls,
        "stock_s": stock,
        "one_trip_s": one_trip,
        "ratio_best": min(stock) / min(one_trip),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=300, help="reservations (each with a read)")
    p.add_argument("--rounds", type=int, default=3, help="runs of each, interleaved")
    args = p.parse_args()
    result = asyncio.run(measure(args.calls, args.rounds))
    print(
        f"{args.calls} reservations + /info reads, one at a time, best of {args.rounds}: "
        f"SQLAlchemy's adapter {min(result['stock_s']):.2f} s, one trip per statement "
        f"{min(result['one_trip_s']):.2f} s: {result['ratio_best']:.2f}x"
    )
    print(f"wrote {save('ledger_trips', result)}")


if __name__ == "__main__":
    main()
