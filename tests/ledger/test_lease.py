"""The database lease: one owner at a time, taken over only from a process that is gone."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from bot.ledger import (
    JobStatus,
    LayoutMismatch,
    LeaseHeld,
    LeaseHolder,
    LeaseKeeper,
    Ledger,
    Shards,
)

from .conftest import GUILD, FakeClock, make_request

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


async def test_shards_each_have_a_lease_and_one_layout(ledger: Ledger, clock: FakeClock) -> None:
    """Processes on shards 0 and 1 of 2 run side by side; a second one for shard 1, or one
    with another shard count, is refused, and takes nothing."""
    live = os.getppid()  # processes that run, on this host
    zero = LeaseKeeper(ledger, holder("zero", pid=live), Shards.of(2, [0]))
    one = LeaseKeeper(ledger, holder("one", pid=live), Shards.of(2, [1]))
    await zero.acquire()
    await one.acquire()
    assert zero.names == ("shard 0/2",) and one.names == ("shard 1/2",)
    me = os.getpid()  # a live process that is not the owners'
    again = LeaseKeeper(ledger, holder("again", pid=me), Shards.of(2, [0, 1]))
    with pytest.raises(LeaseHeld, match="runs shard 0/2 on this database"):
        await again.acquire()
    for other in (Shards(), Shards.of(4, [2])):
        keeper = LeaseKeeper(ledger, holder("other", pid=me), other)
        with pytest.raises(LayoutMismatch, match="with shard_count = 2"):
            await keeper.acquire()
    holders = {name: owner.holder for name, owner in await ledger.leases()}
    assert holders == {"shard 0/2": "zero", "shard 1/2": "one"}  # the refused took nothing
    await one.release()
    clock.advance(seconds=31)  # zero is silent now too: both layouts may change
    await LeaseKeeper(ledger, holder("whole", pid=me)).acquire()


async def test_recovery_takes_only_the_jobs_of_its_shards(ledger: Ledger) -> None:
    shards = Shards.of(2, [1])
    guilds = [GUILD + (i << 22) for i in range(8)]  # a guild's shard: its id >> 22
    ours = [g for g in guilds if shards.owns(g)]
    assert ours and len(ours) < len(guilds)
    for guild in guilds:
        job = (await ledger.reserve(make_request(guild_id=guild))).job
        assert await ledger.mark_running(job.id)
    requeued = await ledger.requeue_interrupted(shards)
    assert sorted(j.request.guild_id for j in requeued) == sorted(ours)
    running = [j for j in await ledger.active_jobs() if j.status is JobStatus.RUNNING]
    assert sorted(j.request.guild_id for j in running) == sorted(set(guilds) - set(ours))
