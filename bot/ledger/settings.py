"""A guild's own settings, set by its moderators with `/settings` (the config gives defaults).

What each setting is called, what values it takes, how it is stored as text (and shown in
the audit log), and `SettingsBook`, the one owner of the writes to `guild_settings` and
`settings_audit`. `None` means "the config's default".
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields, replace
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from .models import GuildSettingsRow, SettingsAudit
from .transactions import Transactions

__all__ = [
    "FLAGGED_POLICIES",
    "SETTINGS",
    "GuildSettings",
    "SettingsBook",
    "SettingsChange",
    "parse_setting",
    "read_settings",
]

FLAGGED_POLICIES = ("spoiler", "refuse_outside_nsfw")
MAX_WORDS = 100
MAX_NEGATIVE = 500
_CHANNEL = re.compile(r"<#(\d{15,25})>|(\d{15,25})")


@dataclass(frozen=True, slots=True)
class GuildSettings:
    """One guild's overrides; a field left `None` takes the config's value."""

    daily_images: int | None = None
    allowed_channel_ids: tuple[int, ...] | None = None  # () : every channel
    blocked_words: tuple[str, ...] | None = None
    forced_negative_prompt: str | None = None
    flagged_images: str | None = None

    def with_value(self, name: str, value: Any) -> GuildSettings:
        return replace(self, **{name: value})

    def value(self, name: str) -> Any:
        return getattr(self, name)


#: The settings by name, as `/settings` offers them.
SETTINGS = tuple(f.name for f in fields(GuildSettings))


@dataclass(frozen=True, slots=True)
class SettingsChange:
    """One audited change: who set which setting of which guild, from what to what."""

    guild_id: int
    moderator_id: int
    setting: str
    old: str | None  # stored text; None: the config's default
    new: str | None


def to_text(value: Any) -> str | None:
    """How a value is stored (and shown in the audit log)."""
    if value is None:
        return None
    if isinstance(value, tuple):
        return json.dumps(list(value))
    return str(value)


def from_text(name: str, text: str | None) -> Any:
    if text is None:
        return None
    if name == "daily_images":
        return int(text)
    if name == "allowed_channel_ids":
        return tuple(int(v) for v in json.loads(text))
    if name == "blocked_words":
        return tuple(str(v) for v in json.loads(text))
    return text


def parse_setting(name: str, text: str) -> Any:
    """The value a moderator typed for `name`; ValueError says what to type instead."""
    text = text.strip()
    if name == "daily_images":
        if not text.isdigit() or int(text) > 100_000:
            raise ValueError("daily_images must be a whole number from 0 to 100000.")
        return int(text)
    if name == "allowed_channel_ids":
        if text.lower() in {"all", "any", "every", "*"}:
            return ()
        found = [int(a or b) for a, b in _CHANNEL.findall(text)]
        if not found:
            raise ValueError("Mention the channels (#art #lounge), or write `all`.")
        return tuple(dict.fromkeys(found))
    if name == "blocked_words":
        words = tuple(dict.fromkeys(w.strip() for w in text.split(",") if w.strip()))
        if len(words) > MAX_WORDS or any(len(w) > 64 for w in words):
            raise ValueError(f"At most {MAX_WORDS} words of up to 64 characters, by commas.")
        return words
    if name == "forced_negative_prompt":
        if len(text) > MAX_NEGATIVE:
            raise ValueError(f"At most {MAX_NEGATIVE} characters.")
        return text
    if name == "flagged_images":
        if text not in FLAGGED_POLICIES:
            raise ValueError(f"flagged_images must be one of {', '.join(FLAGGED_POLICIES)}.")
        return text
    raise ValueError(f"There is no setting {name!r}; the settings are {', '.join(SETTINGS)}.")


async def read_settings(session: AsyncSession, guild_id: int) -> GuildSettings:
    """The guild's own settings, read in `session` (a reservation reads its allowance here)."""
    row = await session.get(GuildSettingsRow, guild_id)
    if row is None:
        return GuildSettings()
    return GuildSettings(**{n: from_text(n, getattr(row, n)) for n in SETTINGS})


class SettingsBook:
    """Per-guild settings and their audit log."""

    def __init__(self, tx: Transactions) -> None:
        self.tx = tx

    async def get(self, guild_id: int) -> GuildSettings:
        """The guild's own settings (fields left None take the config's)."""

        async def work(session: AsyncSession) -> GuildSettings:
            return await read_settings(session, guild_id)

        return await self.tx.read(work)

    async def change(self, guild_id: int, name: str, value: Any, by: int) -> SettingsChange:
        """Set (or, with None, reset to the config's) one setting of a guild, audited."""
        if name not in SETTINGS:
            raise ValueError(f"unknown setting {name!r}")

        async def work(session: AsyncSession) -> SettingsChange:
            now = self.tx.now()
            row = await session.get(GuildSettingsRow, guild_id)
            if row is None:
                row = GuildSettingsRow(guild_id=guild_id, updated_by=by, updated_at=now)
                session.add(row)
            stored = getattr(row, name)
            old = None if stored is None else str(stored)
            new = to_text(value)
            setattr(row, name, value if name == "daily_images" else new)
            row.updated_by, row.updated_at = by, now
            session.add(
                SettingsAudit(
                    guild_id=guild_id,
                    moderator_id=by,
                    changed_at=now,
                    setting=name,
                    old_value=old,
                    new_value=new,
                )
            )
            return SettingsChange(guild_id, by, name, old, new)

        return await self.tx.write(work)

    async def history(self, guild_id: int, *, limit: int = 25) -> tuple[SettingsChange, ...]:
        """The guild's settings changes, newest first."""
        stmt = (
            select(SettingsAudit)
            .where(SettingsAudit.guild_id == guild_id)
            .order_by(SettingsAudit.changed_at.desc(), SettingsAudit.id.desc())
            .limit(limit)
        )

        async def work(session: AsyncSession) -> tuple[SettingsChange, ...]:
            rows = (await session.execute(stmt)).scalars()
            return tuple(
                SettingsChange(r.guild_id, r.moderator_id, r.setting, r.old_value, r.new_value)
                for r in rows
            )

        return await self.tx.read(work)
