"""The pure-asyncio batcher: compatible batches, fairness between users, a bounded queue."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from engine import BatchKey, Busy
from engine.scheduling.batch import Batcher

SMALL = BatchKey(64, 64, 4, 7.0)
LARGE = BatchKey(128, 128, 4, 7.0)


@dataclass(eq=False)
class Item:
    user: str
    key: BatchKey = SMALL
    images: int = 1
    name: str = ""


async def test_compatible_requests_share_a_batch_up_to_capacity() -> None:
    batcher = Batcher(capacity=4, wait_s=0, max_queue=10)
    items = [Item("a", images=2), Item("b", LARGE), Item("c", images=2), Item("d")]
    for item in items:
        batcher.put(item)
    first = await batcher.next_batch()
    assert first == [items[0], items[2]]  # 4 images of the leader's key; b's size waits
    second = await batcher.next_batch()
    assert second == [items[1]]  # b was served before d, who came later
    assert await batcher.next_batch() == [items[3]]


async def test_one_users_many_requests_delay_another_user_by_at_most_one_batch() -> None:
    batcher = Batcher(capacity=2, wait_s=0, max_queue=100)
    flood = [Item("alice", name=f"a{i}") for i in range(20)]
    for item in flood:
        batcher.put(item)
    running = await batcher.next_batch()  # alice's first batch is running when bob arrives
    assert running == flood[:2]
    bob = Item("bob", LARGE, name="bob")  # incompatible with alice's: cannot ride along
    batcher.put(bob)
    assert batcher.positions()[bob] == 1
    assert await batcher.next_batch() == [bob]

    compatible = Item("carol", name="carol")
    batcher.put(compatible)
    assert compatible in await batcher.next_batch()  # rides in the very next batch


async def test_round_robin_interleaves_users_within_a_batch() -> None:
    batcher = Batcher(capacity=4, wait_s=0, max_queue=100)
    for i in range(4):
        batcher.put(Item("alice", name=f"a{i}"))
    for i in range(2):
        batcher.put(Item("bob", name=f"b{i}"))
    names = [item.name for item in await batcher.next_batch()]  # type: ignore[attr-defined]
    assert names == ["a0", "b0", "a1", "b1"]


async def test_a_full_queue_raises_busy_at_once_and_removal_frees_a_place() -> None:
    batcher = Batcher(capacity=4, wait_s=0, max_queue=2)
    first, second = Item("a"), Item("b")
    batcher.put(first)
    batcher.put(second)
    with pytest.raises(Busy) as info:
        batcher.put(Item("c"))
    assert "full" in str(info.value) and info.value.limit == 2
    assert batcher.remove(first) and not batcher.remove(first)
    batcher.put(Item("c"))
    assert len(batcher) == 2


async def test_a_partial_batch_waits_for_companions_then_closes() -> None:
    batcher = Batcher(capacity=2, wait_s=5.0, max_queue=10)
    batcher.put(Item("a"))
    waiter = asyncio.create_task(batcher.next_batch())
    await asyncio.sleep(0)  # let it see a half-full batch and start waiting
    assert not waiter.done()
    batcher.put(Item("b"))  # fills the batch: it closes without waiting the 5 s
    batch = await asyncio.wait_for(waiter, 1.0)
    assert [i.user for i in batch] == ["a", "b"]  # type: ignore[attr-defined]


async def test_close_wakes_the_waiter_and_returns_the_queue() -> None:
    batcher = Batcher(capacity=2, wait_s=0, max_queue=10)
    waiter = asyncio.create_task(batcher.next_batch())
    await asyncio.sleep(0)
    boom = RuntimeError("stop")
    assert batcher.close(boom) == []
    with pytest.raises(RuntimeError, match="stop"):
        await asyncio.wait_for(waiter, 1.0)
    with pytest.raises(RuntimeError, match="stop"):
        batcher.put(Item("a"))


async def test_choosing_a_batch_reads_a_batch_worth_of_a_long_queue() -> None:
    """A thousand jobs queued (a burst): the next batch is chosen by reading the users it
    takes, not every queued job (it once read them all for every decision, and placed every
    job in line by planning every batch: a quarter-second stall of the event loop each)."""
    reads = 0

    @dataclass(eq=False)
    class Counted:
        user: str

        @property
        def key(self) -> BatchKey:
            nonlocal reads
            reads += 1
            return SMALL

        images = 1

    batcher = Batcher(capacity=4, wait_s=0, max_queue=2000)
    items = [Counted(f"u{n}") for n in range(1000)]
    for item in items:
        batcher.put(item)
    reads = 0
    assert await batcher.next_batch() == items[:4]
    assert reads <= 4 * 2  # the leader's key, then one per user taken
