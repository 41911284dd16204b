"""`/imagine fix:`: what a job fixes once its images are made ("faces", "hands" or
"faces,hands"), kept so a restart and a reroll fix it again. Rows from before fix nothing.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 19:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("fix", sa.String(32), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("fix")
