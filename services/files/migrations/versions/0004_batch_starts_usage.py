"""Batches: lines marked started before they run (so none runs twice), the
batch's model, and the tokens of its lines, per line and summed per batch.

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
    op.create_table(
        "batch_line_starts",
        sa.Column("batch_id", sa.String(40), primary_key=True),
        sa.Column("idx", sa.Integer, primary_key=True),
    )
    with op.batch_alter_table("batch_lines") as table:
        table.add_column(
            sa.Column("input_tokens", sa.BigInteger, nullable=False, server_default="0")
        )
        table.add_column(
            sa.Column("output_tokens", sa.BigInteger, nullable=False, server_default="0")
        )
    with op.batch_alter_table("batches") as table:
        table.add_column(sa.Column("model", sa.String(200), nullable=False, server_default=""))
        table.add_column(
            sa.Column("input_tokens", sa.BigInteger, nullable=False, server_default="0")
        )
        table.add_column(
            sa.Column("output_tokens", sa.BigInteger, nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("batches") as table:
        table.drop_column("output_tokens")
        table.drop_column("input_tokens")
        table.drop_column("model")
    with op.batch_alter_table("batch_lines") as table:
        table.drop_column("output_tokens")
        table.drop_column("input_tokens")
    op.drop_table("batch_line_starts")
