"""Indexes for the usage dashboard: one team's or one key's rows in a time range.

The report's queries filter on (team, created_at) or (key_id, created_at); with
these they read only the rows in range of that team or key instead of every
row of the team or key, or every row in range.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_usage_records_team_created_at", "usage_records", ["team", "created_at"])
    op.create_index("ix_usage_records_key_id_created_at", "usage_records", ["key_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_usage_records_key_id_created_at", "usage_records")
    op.drop_index("ix_usage_records_team_created_at", "usage_records")
