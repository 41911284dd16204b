"""Which guilds' jobs a bot process owns: Discord's shards, `[discord] shard_count/shard_ids`.

Discord sends a guild's events to shard `(guild_id >> 22) % shard_count`; a process running
some shards must recover and deliver exactly those guilds' jobs, and take one lease per shard
so that two processes never run one shard. Pure, apart from the SQL filter it builds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import ColumnElement, Integer, func, literal

__all__ = ["OWNER_LEASE", "Shards"]

#: The lease of a process that runs every guild (no sharding).
OWNER_LEASE = "owner"


@dataclass(frozen=True, slots=True)
class Shards:
    """`ids` of `count` shards; `Shards()` is everything (one process, no sharding)."""

    count: int = 1
    ids: tuple[int, ...] = (0,)

    @classmethod
    def of(cls, count: int, ids: Iterable[int] = ()) -> Shards:
        """`[discord]`'s shard_count (0 or 1: none) and shard_ids (empty: all of them)."""
        if count <= 1:
            return cls()
        return cls(count, tuple(sorted(set(ids))) or tuple(range(count)))

    @property
    def everything(self) -> bool:
        return self.count <= 1

    def of_guild(self, guild_id: int | None) -> int:
        """The shard Discord sends this guild's events to (direct messages: shard 0)."""
        return 0 if guild_id is None or self.everything else (guild_id >> 22) % self.count

    def owns(self, guild_id: int | None) -> bool:
        return self.everything or self.of_guild(guild_id) in self.ids

    @property
    def lease_names(self) -> tuple[str, ...]:
        """One lease per shard run here (`owner` without sharding)."""
        if self.everything:
            return (OWNER_LEASE,)
        return tuple(f"shard {i}/{self.count}" for i in self.ids)

    @staticmethod
    def layout(lease_name: str) -> int:
        """The shard count a lease was taken under (1: no sharding)."""
        _, _, count = lease_name.partition("/")
        return int(count) if count.isdigit() else 1

    def clause(self, guild_id: ColumnElement[int]) -> ColumnElement[bool] | None:
        """SQL: the guild column's shard is one of ours (None: no filter needed)."""
        if self.everything:
            return None
        # PostgreSQL shifts a bigint by an integer only: the 22 must not be sent as a bigint.
        shard = func.coalesce(guild_id, 0).op(">>")(literal(22, Integer())) % self.count
        return shard.in_(self.ids)

    def describe(self) -> str:
        if self.everything:
            return "every guild"
        return f"shard(s) {', '.join(map(str, self.ids))} of {self.count}"
