"""ORM tables of the usage ledger. One module owns the writes to each (see `store.py`);
migrations must match them.

Times are stored as UTC: `timestamptz` on PostgreSQL, naive UTC text on SQLite (which has no
time zones), and always come back timezone-aware.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from .jobs import JobKind, JobStatus
from .quota import QuotaKind

__all__ = [
    "NAMING_CONVENTION",
    "Base",
    "DatabaseIdentity",
    "GuildSettingsRow",
    "Job",
    "Lease",
    "QuotaAudit",
    "QuotaOverride",
    "SettingsAudit",
    "UTCDateTime",
]

#: Deterministic constraint names, so migrations (and SQLite batch mode) can refer to them.
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def _in_list(column: str, values: Any) -> str:
    return f"{column} IN ({', '.join(repr(str(v)) for v in values)})"


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend; naive values are rejected, not guessed."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the ledger stores UTC-aware times")
        value = value.astimezone(UTC)
        # SQLite compares these as text: store them all in one zone, without an offset.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime()}  # noqa: RUF012 (SQLAlchemy's own hook)


class Job(Base):
    """One image request, from reservation (or refusal) to delivery."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Random, carried by the job's buttons and attachments: ids restart after a database
    # reset, (id, key) does not. NULL only on rows from before revision 0003.
    key: Mapped[str | None] = mapped_column(String(16))
    guild_id: Mapped[int] = mapped_column(BigInteger)
    channel_id: Mapped[int] = mapped_column(BigInteger)
    user_id: Mapped[int] = mapped_column(BigInteger)
    application_id: Mapped[int] = mapped_column(BigInteger)
    interaction_id: Mapped[int] = mapped_column(BigInteger)
    # A secret valid for 15 minutes: cleared as soon as the job ends.
    interaction_token: Mapped[str | None] = mapped_column(Text)
    message_id: Mapped[int | None] = mapped_column(BigInteger)  # progress / result message

    prompt: Mapped[str] = mapped_column(Text)
    negative_prompt: Mapped[str] = mapped_column(Text, default="")
    model: Mapped[str] = mapped_column(String(200))
    scheduler: Mapped[str] = mapped_column(String(32))
    steps: Mapped[int] = mapped_column(Integer)
    guidance: Mapped[float] = mapped_column(Float)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(BigInteger)
    image_count: Mapped[int] = mapped_column(Integer)  # charged now (less any refund)
    images_asked: Mapped[int] = mapped_column(Integer, server_default="1")  # revision 0006

    status: Mapped[str] = mapped_column(String(16))
    refusal_reason: Mapped[str | None] = mapped_column(String(32))
    # Why it failed or was refused; for a job done, why its images could not be kept.
    error: Mapped[str | None] = mapped_column(Text)
    reroll_of: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("jobs.id", ondelete="SET NULL")
    )
    # Jobs made from an image: an upscale or variation of `source_index` of `source_job_id`,
    # or an /imagine from an attachment (no source job); `strength` is image-to-image's.
    kind: Mapped[str] = mapped_column(String(16), server_default="imagine")
    source_job_id: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("jobs.id", ondelete="SET NULL")
    )
    source_index: Mapped[int | None] = mapped_column(Integer)
    strength: Mapped[float | None] = mapped_column(Float)
    fix: Mapped[str] = mapped_column(String(32), server_default="")  # revision 0008

    queued_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    delivery_started_at: Mapped[datetime | None]  # a post may exist from here on
    delivered_at: Mapped[datetime | None]  # when the result was posted

    __table_args__ = (
        CheckConstraint(_in_list("status", JobStatus), name="status"),
        CheckConstraint(
            "(status = 'refused') = (refusal_reason IS NOT NULL)", name="refusal_reason"
        ),
        CheckConstraint("image_count >= 0", name="image_count"),
        CheckConstraint("images_asked >= 1", name="images_asked"),
        CheckConstraint(_in_list("kind", JobKind), name="kind"),
        # The quota window and a user's job list: WHERE guild_id, user_id AND queued_at > ...
        Index("ix_jobs_guild_user_queued", "guild_id", "user_id", "queued_at"),
        # /usage over a period: WHERE guild_id AND queued_at BETWEEN ...
        Index("ix_jobs_guild_queued", "guild_id", "queued_at"),
        # active_jobs() and restart recovery: WHERE status IN ('queued', 'running')
        Index("ix_jobs_status_queued", "status", "queued_at"),
        Index("ix_jobs_reroll_of", "reroll_of"),
        Index("ix_jobs_source_job_id", "source_job_id"),
    )


class QuotaOverride(Base):
    """A moderator's per-user allowance in one guild: a number, NULL (unlimited) or 0 (blocked).

    No row means the guild's default from `QuotaPolicy`.
    """

    __tablename__ = "quota_overrides"

    guild_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    user_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    daily_images: Mapped[int | None] = mapped_column(Integer)
    set_by: Mapped[int] = mapped_column(BigInteger)
    set_at: Mapped[datetime]
    reason: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        CheckConstraint("daily_images IS NULL OR daily_images >= 0", name="daily_images"),
    )


class QuotaAudit(Base):
    """Who changed whose allowance, in which guild, when, and from what to what."""

    __tablename__ = "quota_audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    guild_id: Mapped[int] = mapped_column(BigInteger)
    user_id: Mapped[int] = mapped_column(BigInteger)
    moderator_id: Mapped[int] = mapped_column(BigInteger)
    changed_at: Mapped[datetime]
    old_kind: Mapped[str] = mapped_column(String(16))
    old_daily: Mapped[int | None] = mapped_column(Integer)
    new_kind: Mapped[str] = mapped_column(String(16))
    new_daily: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        CheckConstraint(_in_list("old_kind", QuotaKind), name="old_kind"),
        CheckConstraint(_in_list("new_kind", QuotaKind), name="new_kind"),
        Index("ix_quota_audit_guild_changed", "guild_id", "changed_at"),
    )


class Lease(Base):
    """The process that owns the database, renewed by its heartbeat (see `lease.py`)."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    holder: Mapped[str] = mapped_column(String(64))
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    acquired_at: Mapped[datetime]
    heartbeat_at: Mapped[datetime]


class DatabaseIdentity(Base):
    """One row, written when the database is created: which database this is (see `identity.py`)."""

    __tablename__ = "database_identity"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime]


class GuildSettingsRow(Base):
    """A guild's own rules, set by its moderators with `/settings`; NULL: the config's."""

    __tablename__ = "guild_settings"

    guild_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    daily_images: Mapped[int | None] = mapped_column(Integer)
    allowed_channel_ids: Mapped[str | None] = mapped_column(Text)  # JSON list of ids
    blocked_words: Mapped[str | None] = mapped_column(Text)  # JSON list of words
    forced_negative_prompt: Mapped[str | None] = mapped_column(Text)
    flagged_images: Mapped[str | None] = mapped_column(String(32))
    updated_by: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime]

    __table_args__ = (
        CheckConstraint("daily_images IS NULL OR daily_images >= 0", name="daily_images"),
    )


class SettingsAudit(Base):
    """Who changed which of a guild's settings, when, from what to what (NULL: the default)."""

    __tablename__ = "settings_audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    guild_id: Mapped[int] = mapped_column(BigInteger)
    moderator_id: Mapped[int] = mapped_column(BigInteger)
    changed_at: Mapped[datetime]
    setting: Mapped[str] = mapped_column(String(32))
    old_value: Mapped[str | None] = mapped_column(Text)
    new_value: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_settings_audit_guild_changed", "guild_id", "changed_at"),)
