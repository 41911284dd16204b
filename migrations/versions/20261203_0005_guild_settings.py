"""Per-guild settings moderators change with /settings, and their audit log.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 07:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As in 0001: bot.ledger.models.UTCDateTime over this type, no application imports.
UTC_DATETIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "guild_settings",
        sa.Column("guild_id", sa.BigInteger(), nullable=False),
        sa.Column("daily_images", sa.Integer(), nullable=True),
        sa.Column("allowed_channel_ids", sa.Text(), nullable=True),
        sa.Column("blocked_words", sa.Text(), nullable=True),
        sa.Column("forced_negative_prompt", sa.Text(), nullable=True),
        sa.Column("flagged_images", sa.String(length=32), nullable=True),
        sa.Column("updated_by", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", UTC_DATETIME, nullable=False),
        sa.CheckConstraint(
            "daily_images IS NULL OR daily_images >= 0",
            name=op.f("ck_guild_settings_daily_images"),
        ),
        sa.PrimaryKeyConstraint("guild_id", name=op.f("pk_guild_settings")),
    )
    op.create_table(
        "settings_audit",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("guild_id", sa.BigInteger(), nullable=False),
        sa.Column("moderator_id", sa.BigInteger(), nullable=False),
        sa.Column("changed_at", UTC_DATETIME, nullable=False),
        sa.Column("setting", sa.String(length=32), nullable=False),
        sa.Column("old_value", sa.Text(), nullable=True),
        sa.Column("new_value", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_settings_audit")),
    )
    op.create_index("ix_settings_audit_guild_changed", "settings_audit", ["guild_id", "changed_at"])


def downgrade() -> None:
    op.drop_index("ix_settings_audit_guild_changed", table_name="settings_audit")
    op.drop_table("settings_audit")
    op.drop_table("guild_settings")
