"""Jobs of the canvas and of edits: the kinds edit, zoom, pan, region and fix beside
imagine, upscale and variation.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 17:30:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BEFORE = ("imagine", "upscale", "variation")
KINDS = (*BEFORE, "edit", "zoom", "pan", "region", "fix")


def _kinds(kinds: Sequence[str]) -> str:
    return "kind IN (" + ", ".join(f"'{k}'" for k in kinds) + ")"


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint(op.f("ck_jobs_kind"), type_="check")
        batch.create_check_constraint(op.f("ck_jobs_kind"), _kinds(KINDS))


def downgrade() -> None:
    # Jobs of the new kinds cannot be kept by the older schema: they become imagine jobs.
    op.execute("UPDATE jobs SET kind = 'imagine' WHERE " + "NOT " + _kinds(BEFORE))
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint(op.f("ck_jobs_kind"), type_="check")
        batch.create_check_constraint(op.f("ck_jobs_kind"), _kinds(BEFORE))
