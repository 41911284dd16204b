"""How many images the member asked for, apart from what the job is charged now
(`image_count` drops when moderation withholds images and they are given back, and an
upscale is charged `upscale_cost` for one image): a reroll asks for the images asked.

Rows from before keep what is known: their charge, or 1 for an upscale.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-10 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(
            sa.Column("images_asked", sa.Integer(), nullable=False, server_default="1")
        )
    op.execute(
        "UPDATE jobs SET images_asked = image_count WHERE kind != 'upscale' AND image_count >= 1"
    )
    with op.batch_alter_table("jobs") as batch:
        batch.create_check_constraint(op.f("ck_jobs_images_asked"), "images_asked >= 1")


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint(op.f("ck_jobs_images_asked"), type_="check")
        batch.drop_column("images_asked")
