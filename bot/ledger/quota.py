"""Quota policy and the rolling-window arithmetic, kept pure so it can be tested exhaustively.

The rule: a user's images count against their allowance in a guild for **24 hours from the
moment the job was queued** (a rolling window, not a calendar day). Images count as soon as
they are reserved (job `queued`, `running` or `done`); a `failed` or `cancelled` job gives
them back; a `refused` job never takes any. So the allowance next grows when the oldest
counted job turns 24 hours old.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from .jobs import JobRecord, JobStatus, RefusalReason

__all__ = [
    "WINDOW",
    "CountedImages",
    "QuotaChange",
    "QuotaKind",
    "QuotaPolicy",
    "QuotaSetting",
    "Reservation",
    "UserStatus",
    "available_at",
    "images_used",
    "next_increase",
]

#: How long images count against the allowance after their job was queued.
WINDOW = timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class QuotaPolicy:
    """Per-guild defaults from the bot's config; moderators' overrides live in the database."""

    daily_images: int = 25  # images per user per rolling 24 hours; 0: only overrides may draw
    max_queued_per_user: int = 2  # jobs one user may have queued or running at once
    window_hours: int = field(default=24, init=False)  # fixed: the rule is documented as 24 h

    def __post_init__(self) -> None:
        if self.daily_images < 0:
            raise ValueError("daily_images must be 0 or more")
        if self.max_queued_per_user < 1:
            raise ValueError("max_queued_per_user must be at least 1")


class QuotaKind(StrEnum):
    """What decides a user's allowance."""

    DEFAULT = "default"  # no override: the guild's QuotaPolicy.daily_images
    LIMITED = "limited"  # a moderator's number (0 means blocked)
    UNLIMITED = "unlimited"


@dataclass(frozen=True, slots=True)
class QuotaSetting:
    """A user's quota setting as a moderator sees it; `daily` is None unless LIMITED."""

    kind: QuotaKind
    daily: int | None = None

    @classmethod
    def from_override(cls, daily: int | None, *, exists: bool) -> QuotaSetting:
        """Decode an override row (None = unlimited), or its absence."""
        if not exists:
            return cls(QuotaKind.DEFAULT)
        if daily is None:
            return cls(QuotaKind.UNLIMITED)
        return cls(QuotaKind.LIMITED, daily)

    @property
    def blocked(self) -> bool:
        return self.kind is QuotaKind.LIMITED and self.daily == 0

    def limit(self, policy: QuotaPolicy) -> int | None:
        """Images allowed per window under `policy`, None for unlimited."""
        if self.kind is QuotaKind.UNLIMITED:
            return None
        if self.kind is QuotaKind.DEFAULT:
            return policy.daily_images
        return self.daily

    def __str__(self) -> str:
        if self.kind is QuotaKind.LIMITED:
            return "blocked" if self.blocked else f"{self.daily} images/24h"
        return str(self.kind)


@dataclass(frozen=True, slots=True)
class CountedImages:
    """One job's images as the quota sees them: how many, and when they were reserved."""

    queued_at: datetime
    images: int


@dataclass(frozen=True, slots=True)
class UserStatus:
    """A user's standing in one guild, for `/quota`-style replies."""

    guild_id: int
    user_id: int
    setting: QuotaSetting
    limit: int | None  # images per rolling 24 h; None: unlimited
    used: int  # images counted in the last 24 h
    queued: int
    running: int
    refills_at: datetime | None  # when the allowance next grows; None if nothing is counted

    @property
    def unlimited(self) -> bool:
        return self.limit is None

    @property
    def blocked(self) -> bool:
        return self.setting.blocked

    @property
    def remaining(self) -> int | None:
        """Images the user may still reserve now; None for unlimited."""
        return None if self.limit is None else max(0, self.limit - self.used)


@dataclass(frozen=True, slots=True)
class Reservation:
    """The answer to `Ledger.reserve`: the stored job, queued or refused, and why.

    When refused for quota, `retry_at` says when enough images come back for the same request
    (None if they never will, e.g. more images than the whole allowance, or a blocked user).
    """

    job: JobRecord
    limit: int | None  # the allowance that applied; None: unlimited
    remaining: int | None  # images left after this reservation; None: unlimited
    retry_at: datetime | None = None

    @property
    def accepted(self) -> bool:
        return self.job.status is JobStatus.QUEUED

    @property
    def reason(self) -> RefusalReason | str | None:
        return self.job.refusal_reason


@dataclass(frozen=True, slots=True)
class QuotaChange:
    """One entry of the quota audit log."""

    id: int
    guild_id: int
    user_id: int
    moderator_id: int
    changed_at: datetime
    old: QuotaSetting
    new: QuotaSetting
    reason: str | None


def _in_window(counted: Iterable[CountedImages], now: datetime) -> list[CountedImages]:
    return [c for c in counted if now < c.queued_at + WINDOW]


def images_used(counted: Iterable[CountedImages], now: datetime) -> int:
    """Images counted at `now`: those queued less than 24 hours before it."""
    return sum(c.images for c in _in_window(counted, now))


def next_increase(counted: Iterable[CountedImages], now: datetime) -> datetime | None:
    """When the allowance next grows: the oldest counted job's time + 24 h (None if none)."""
    times = [c.queued_at for c in _in_window(counted, now)]
    return min(times) + WINDOW if times else None


def available_at(
    counted: Iterable[CountedImages], limit: int, images: int, now: datetime
) -> datetime | None:
    """The earliest time `images` more fit under `limit`: `now` if they fit already.

    None when they never can (more than the whole allowance). Assumes nothing new is
    reserved meanwhile, which is what a "try again at" message means.
    """
    if images > limit:
        return None
    window = sorted(_in_window(counted, now), key=lambda c: c.queued_at)
    used = sum(c.images for c in window)
    if used + images <= limit:
        return now
    for c in window:
        used -= c.images
        if used + images <= limit:
            return c.queued_at + WINDOW
    raise AssertionError("unreachable: an empty window always fits images <= limit")
