"""Usage rows say which batch a request was a line of (empty for live requests).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "usage_records",
        sa.Column("batch_id", sa.String(40), nullable=False, server_default=""),
    )


def downgrade() -> None:
    op.drop_column("usage_records", "batch_id")
