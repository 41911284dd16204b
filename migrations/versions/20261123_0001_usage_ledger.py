"""Usage ledger: jobs, per-user quota overrides, and their audit log.

Revision ID: 0001
Revises:
Create Date: 2026-11-23 20:06:26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# bot.ledger.models.UTCDateTime is a TypeDecorator over this type; migrations stay free of
# application imports so old revisions keep working when the models change.
UTC_DATETIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("guild_id", sa.BigInteger(), nullable=False),
        sa.Column("channel_id", sa.BigInteger(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("application_id", sa.BigInteger(), nullable=False),
        sa.Column("interaction_id", sa.BigInteger(), nullable=False),
        sa.Column("interaction_token", sa.Text(), nullable=True),
        sa.Column("message_id", sa.BigInteger(), nullable=True),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("negative_prompt", sa.Text(), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("scheduler", sa.String(length=32), nullable=False),
        sa.Column("steps", sa.Integer(), nullable=False),
        sa.Column("guidance", sa.Float(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("image_count", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("refusal_reason", sa.String(length=32), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("reroll_of", sa.Integer(), nullable=True),
        sa.Column("queued_at", UTC_DATETIME, nullable=False),
        sa.Column("started_at", UTC_DATETIME, nullable=True),
        sa.Column("finished_at", UTC_DATETIME, nullable=True),
        sa.Column("delivered_at", UTC_DATETIME, nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'done', 'failed', 'cancelled', 'refused')",
            name=op.f("ck_jobs_status"),
        ),
        sa.CheckConstraint(
            "(status = 'refused') = (refusal_reason IS NOT NULL)",
            name=op.f("ck_jobs_refusal_reason"),
        ),
        sa.CheckConstraint("image_count >= 0", name=op.f("ck_jobs_image_count")),
        sa.ForeignKeyConstraint(
            ["reroll_of"],
            ["jobs.id"],
            name=op.f("fk_jobs_reroll_of_jobs"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    op.create_index("ix_jobs_guild_user_queued", "jobs", ["guild_id", "user_id", "queued_at"])
    op.create_index("ix_jobs_guild_queued", "jobs", ["guild_id", "queued_at"])
    op.create_index("ix_jobs_status_queued", "jobs", ["status", "queued_at"])
    op.create_index("ix_jobs_reroll_of", "jobs", ["reroll_of"])

    op.create_table(
        "quota_overrides",
        sa.Column("guild_id", sa.BigInteger(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("daily_images", sa.Integer(), nullable=True),
        sa.Column("set_by", sa.BigInteger(), nullable=False),
        sa.Column("set_at", UTC_DATETIME, nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "daily_images IS NULL OR daily_images >= 0",
            name=op.f("ck_quota_overrides_daily_images"),
        ),
        sa.PrimaryKeyConstraint("guild_id", "user_id", name=op.f("pk_quota_overrides")),
    )

    op.create_table(
        "quota_audit",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("guild_id", sa.BigInteger(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("moderator_id", sa.BigInteger(), nullable=False),
        sa.Column("changed_at", UTC_DATETIME, nullable=False),
        sa.Column("old_kind", sa.String(length=16), nullable=False),
        sa.Column("old_daily", sa.Integer(), nullable=True),
        sa.Column("new_kind", sa.String(length=16), nullable=False),
        sa.Column("new_daily", sa.Integer(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "old_kind IN ('default', 'limited', 'unlimited')",
            name=op.f("ck_quota_audit_old_kind"),
        ),
        sa.CheckConstraint(
            "new_kind IN ('default', 'limited', 'unlimited')",
            name=op.f("ck_quota_audit_new_kind"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_quota_audit")),
    )
    op.create_index("ix_quota_audit_guild_changed", "quota_audit", ["guild_id", "changed_at"])


def downgrade() -> None:
    op.drop_index("ix_quota_audit_guild_changed", table_name="quota_audit")
    op.drop_table("quota_audit")
    op.drop_table("quota_overrides")
    op.drop_index("ix_jobs_reroll_of", table_name="jobs")
    op.drop_index("ix_jobs_status_queued", table_name="jobs")
    op.drop_index("ix_jobs_guild_queued", table_name="jobs")
    op.drop_index("ix_jobs_guild_user_queued", table_name="jobs")
    op.drop_table("jobs")
