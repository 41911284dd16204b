"""The database lease: one owner at a time, taken over only from a process that is gone."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from bot.ledger import LeaseHeld, LeaseHolder, LeaseKeeper, Ledger

from .conftest import FakeClock

HOST = "bot-host"


def holder(name: str, *, host: str = HOST, pid: int = 4242) -> LeaseHolder:
    return LeaseHolder(name, host, pid)


async def test_one_owner_until_it_releases(ledger: Ledger, clock: FakeClock) -> None:
    first, second = holder("first"), holder("second")
    owner = await ledger.claim_lease(first, stale=lambda _: False)
    assert owner.holder == "first" and owner.heartbeat_at == clock.now
    refused = await ledger.claim_lease(second, stale=lambda _: False)
    assert (refused.holder, refused.pid, refused.host) == ("first", 4242, HOST)
    assert await ledger.renew_lease(first)
    assert not await ledger.renew_lease(second)  # a non-owner's heartbeat changes nothing
    await ledger.release_lease(second)  # neither does its release
    assert (await ledger.claim_lease(second, stale=lambda _: False)).holder == "first"
    await ledger.release_lease(first)
    assert (await ledger.claim_lease(second, stale=lambda _: False)).holder == "second"


async def test_a_stale_owner_is_taken_over_and_then_stops(ledger: Ledger) -> None:
    old, new = holder("old"), holder("new")
    await ledger.claim_lease(old, stale=lambda _: False)
    assert (await ledger.claim_lease(new, stale=lambda owner: owner.holder == "old")).holder == (
        "new"
    )
    assert not await ledger.renew_lease(old)  # the old process learns it lost the lease


async def test_the_keeper_refuses_a_live_owner_and_takes_a_dead_one(
    ledger: Ledger, clock: FakeClock
) -> None:
    live = LeaseKeeper(ledger, holder("live", pid=os.getppid()))  # a process that runs
    await live.acquire()
    assert live.healthy()
    second = LeaseKeeper(ledger, holder("second", pid=os.getpid()))
    with pytest.raises(LeaseHeld, match=r"another imagine-bot is using this database \(pid"):
        await second.acquire()
    # Another host: only the heartbeat's age tells, after `LEASE_TTL`.
    elsewhere = LeaseKeeper(ledger, holder("elsewhere", host="other-host"))
    with pytest.raises(LeaseHeld):
        await elsewhere.acquire()
    clock.advance(seconds=31)
    await elsewhere.acquire()  # the heartbeat is too old: taken over
    # Same host, a pid that no longer runs (a killed bot): taken over at once.
    dead = await _dead_pid()
    assert LeaseKeeper(ledger, replace(holder("x"), pid=os.getpid())).stale(
        replace(holder("gone"), pid=dead, heartbeat_at=clock.now)
    )


async def _dead_pid() -> int:
    """The pid of a process that has exited."""
    import asyncio

    process = await asyncio.create_subprocess_exec("true")
    await process.wait()
    return process.pid
