"""Usage rows say which route a request came in on (empty for rows from before).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "usage_records",
        sa.Column("route", sa.String(64), nullable=False, server_default=""),
    )


def downgrade() -> None:
    op.drop_column("usage_records", "route")
