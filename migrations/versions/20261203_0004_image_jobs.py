"""Jobs made from images: what kind of job (imagine, upscale, variation), the job and image
they came from, and the image-to-image strength.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 03:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KINDS = ("imagine", "upscale", "variation")


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(
            sa.Column("kind", sa.String(length=16), nullable=False, server_default="imagine")
        )
        batch.add_column(sa.Column("source_job_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("source_index", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("strength", sa.Float(), nullable=True))
        batch.create_foreign_key(
            op.f("fk_jobs_source_job_id_jobs"),
            "jobs",
            ["source_job_id"],
            ["id"],
            ondelete="SET NULL",
        )
        batch.create_check_constraint(
            op.f("ck_jobs_kind"), "kind IN (" + ", ".join(f"'{k}'" for k in KINDS) + ")"
        )
        batch.create_index("ix_jobs_source_job_id", ["source_job_id"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_source_job_id")
        batch.drop_constraint(op.f("ck_jobs_kind"), type_="check")
        batch.drop_constraint(op.f("fk_jobs_source_job_id_jobs"), type_="foreignkey")
        batch.drop_column("strength")
        batch.drop_column("source_index")
        batch.drop_column("source_job_id")
        batch.drop_column("kind")
