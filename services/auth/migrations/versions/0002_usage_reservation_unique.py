"""One ledger row per admitted request: usage rows carry their reservation id,
unique, so a settle delivered twice is recorded once (the database decides, not
a replica's memory).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: rows written before this revision have none (NULLs never collide).
    op.add_column("usage_records", sa.Column("reservation_id", sa.String(64), nullable=True))
    op.create_index(
        "ix_usage_records_reservation_id", "usage_records", ["reservation_id"], unique=True
    )


def downgrade() -> None:
    op.drop_index("ix_usage_records_reservation_id", "usage_records")
    op.drop_column("usage_records", "reservation_id")
