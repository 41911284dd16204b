"""Every job gets a random key that its buttons and attachments carry, and the database gets
an identity the bot remembers outside it.

A job id alone is not an identity: after a database reset or a restore from an older backup,
ids start again and an old message's button would name someone else's new job. The key makes
a (id, key) pair unique across databases. Rows from before this revision keep a NULL key, as
the buttons already posted for them carry none.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 02:30:00
"""

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_DATETIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("key", sa.String(length=16), nullable=True))
    identity = op.create_table(
        "database_identity",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_database_identity")),
    )
    now = datetime.now(UTC)
    if op.get_context().dialect.name == "sqlite":  # naive UTC text, as the ORM stores it
        now = now.replace(tzinfo=None)
    op.bulk_insert(identity, [{"id": uuid.uuid4().hex, "created_at": now}])


def downgrade() -> None:
    op.drop_table("database_identity")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("key")
