"""One owner per database: a lease row the running bot renews, so a second process refuses.

A second `imagine-bot run` on the same database (started by mistake, or a restart while the
old process still runs) would otherwise re-run and post the first one's jobs. At start-up the
bot claims the lease; it is refused while another live process holds it, that is, one whose
heartbeat is younger than `LEASE_TTL`, unless that process is known to be gone (same host,
its pid no longer runs, or it is our own pid: a previous life of this container). The
holder renews it every `HEARTBEAT_INTERVAL`; a holder that finds the lease taken stops, so
two processes never both run the jobs. The heartbeat is also the health check's write probe.

`Leases` owns the `leases` table; the keeper reaches it through the `Ledger` facade.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from .errors import LedgerError
from .models import Lease
from .shards import OWNER_LEASE, Shards
from .transactions import Transactions

__all__ = [
    "HEARTBEAT_INTERVAL",
    "LEASE_TTL",
    "LayoutMismatch",
    "LeaseHeld",
    "LeaseHolder",
    "LeaseKeeper",
    "Leases",
]

log = logging.getLogger(__name__)

#: How often the holder writes its heartbeat.
HEARTBEAT_INTERVAL = 10.0
#: A heartbeat older than this belongs to a process that is gone (or stalled: it then stops).
LEASE_TTL = timedelta(seconds=30)


@dataclass(frozen=True, slots=True)
class LeaseHolder:
    """A process that holds (or asks for) the ledger's lease."""

    holder: str  # random per process
    host: str
    pid: int
    acquired_at: datetime | None = None
    heartbeat_at: datetime | None = None

    @classmethod
    def this_process(cls) -> LeaseHolder:
        return cls(uuid.uuid4().hex, socket.gethostname(), os.getpid())

    def describe(self, now: datetime) -> str:
        seen = (
            f", last seen {max(0, round((now - self.heartbeat_at).total_seconds()))} s ago"
            if self.heartbeat_at is not None
            else ""
        )
        return f"pid {self.pid} on {self.host}{seen}"


class LeaseHeld(LedgerError):
    """Another live process holds a lease this one needs: the database's, or a shard's
    (`taken`), or any under another shard layout (`LayoutMismatch`)."""

    def __init__(self, owner: LeaseHolder, message: str) -> None:
        super().__init__(message)
        self.owner = owner

    @classmethod
    def taken(cls, owner: LeaseHolder, now: datetime, name: str = OWNER_LEASE) -> LeaseHeld:
        """`owner` holds lease `name` (`OWNER_LEASE`: the whole database)."""
        who = owner.describe(now)
        if name == OWNER_LEASE:
            return cls(
                owner,
                f"another imagine-bot is using this database ({who}): stop it first, or give "
                "each bot its own [database] url",
            )
        return cls(
            owner,
            f"another imagine-bot runs {name} on this database ({who}): stop it first, or "
            "give this process other [discord] shard_ids",
        )


class LayoutMismatch(LeaseHeld):
    """A live process runs this database with another `[discord] shard_count`."""

    def __init__(self, owner: LeaseHolder, now: datetime, theirs: int, ours: int) -> None:
        super().__init__(
            owner,
            f"another imagine-bot uses this database with shard_count = {theirs} "
            f"({owner.describe(now)}), this one with {ours}: every process on one database "
            "needs the same [discord] shard_count",
        )


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it runs
        return True
    return True


class LeaseKeeper:
    """Claims the leases of one bot process (the database's, or one per shard it runs),
    renews them, and releases them."""

    def __init__(
        self, ledger: LeaseLedger, me: LeaseHolder | None = None, shards: Shards | None = None
    ) -> None:
        self.ledger = ledger
        self.me = me or LeaseHolder.this_process()
        self.shards = shards or Shards()
        self._last_write: float | None = None  # monotonic time of the last successful write

    def stale(self, owner: LeaseHolder) -> bool:
        """Whether `owner` is gone, so its lease may be taken."""
        if owner.heartbeat_at is None or self.ledger.now() - owner.heartbeat_at > LEASE_TTL:
            return True
        if owner.host != self.me.host:
            return False  # another machine: only its heartbeat can tell
        return owner.pid == self.me.pid or not _pid_running(owner.pid)

    async def acquire(self) -> None:
        """Take every lease this process needs, or raise `LeaseHeld` naming the live owner
        (and take none)."""
        ours = self.shards.count
        for name, owner in await self.ledger.leases():
            live = owner.holder != self.me.holder and not self.stale(owner)
            if live and Shards.layout(name) != ours:
                raise LayoutMismatch(owner, self.ledger.now(), Shards.layout(name), ours)
        taken: list[str] = []
        for name in self.shards.lease_names:
            owner = await self.ledger.claim_lease(self.me, self.stale, name)
            if owner.holder != self.me.holder:
                for mine in taken:
                    await self.ledger.release_lease(self.me, mine)
                raise LeaseHeld.taken(owner, self.ledger.now(), name)
            taken.append(name)
        self._last_write = time.monotonic()

    async def run(self, on_lost: Callable[[], None]) -> None:
        """Renew every `HEARTBEAT_INTERVAL`; call `on_lost` (and end) if another took it."""
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            try:
                held = all([await self.ledger.renew_lease(self.me, n) for n in self.names])
            except Exception as exc:  # a full or lost database: health says so; keep trying
                log.error("could not renew the database lease: %s", exc)
                continue
            if not held:
                log.error("another process took over this database: stopping")
                on_lost()
                return
            self._last_write = time.monotonic()

    @property
    def names(self) -> tuple[str, ...]:
        return self.shards.lease_names

    def healthy(self) -> bool:
        """Whether a write (claim or heartbeat) succeeded within two heartbeat intervals."""
        last = self._last_write
        return last is not None and time.monotonic() - last <= 2 * HEARTBEAT_INTERVAL + 1

    async def release(self) -> None:
        """Give the lease up on a clean stop, so the next start need not wait."""
        try:
            for name in self.names:
                await self.ledger.release_lease(self.me, name)
        except Exception as exc:
            log.warning("could not release the database lease: %s", exc)


def _holder(row: Lease) -> LeaseHolder:
    return LeaseHolder(row.holder, row.host, row.pid, row.acquired_at, row.heartbeat_at)


class Leases:
    """The lease rows: who owns the database, or each shard of it."""

    def __init__(self, tx: Transactions) -> None:
        self.tx = tx

    async def all(self) -> tuple[tuple[str, LeaseHolder], ...]:
        """Every lease row: its name (`Shards.lease_names`) and holder."""

        async def work(session: AsyncSession) -> tuple[tuple[str, LeaseHolder], ...]:
            rows = await session.scalars(select(Lease).order_by(Lease.name))
            return tuple((row.name, _holder(row)) for row in rows)

        return await self.tx.read(work)

    async def claim(
        self, me: LeaseHolder, stale: Callable[[LeaseHolder], bool], name: str
    ) -> LeaseHolder:
        """Make `me` the owner of lease `name` unless a live process is (`stale` says which
        are gone); returns the owner after the attempt."""

        async def work(session: AsyncSession) -> LeaseHolder:
            row = await session.get(Lease, name)
            if row is not None and row.holder != me.holder and not stale(_holder(row)):
                return _holder(row)
            now = self.tx.now()
            values = {"holder": me.holder, "host": me.host, "pid": me.pid}
            if row is None:
                row = Lease(name=name, acquired_at=now, heartbeat_at=now, **values)
                session.add(row)
            else:
                for key, value in (values | {"acquired_at": now, "heartbeat_at": now}).items():
                    setattr(row, key, value)
            await session.flush()
            return _holder(row)

        try:
            return await self.tx.write(work)
        except IntegrityError:  # another process inserted the row first (PostgreSQL)
            return await self.tx.write(work)

    async def renew(self, me: LeaseHolder, name: str) -> bool:
        """The owner's heartbeat; False if another process holds the lease now."""
        return bool(
            await self.tx.execute(
                update(Lease)
                .where(Lease.name == name, Lease.holder == me.holder)
                .values(heartbeat_at=self.tx.now())
            )
        )

    async def release(self, me: LeaseHolder, name: str) -> None:
        """Give the lease up (a clean stop), if `me` still holds it."""
        await self.tx.execute(delete(Lease).where(Lease.name == name, Lease.holder == me.holder))


class LeaseLedger(Protocol):
    """What the keeper needs of `Ledger` (whose lease calls `Leases` answers)."""

    def now(self) -> datetime: ...

    async def leases(self) -> tuple[tuple[str, LeaseHolder], ...]: ...

    async def claim_lease(
        self, me: LeaseHolder, stale: Callable[[LeaseHolder], bool], name: str = ...
    ) -> LeaseHolder: ...

    async def renew_lease(self, me: LeaseHolder, name: str = ...) -> bool: ...

    async def release_lease(self, me: LeaseHolder, name: str = ...) -> None: ...
