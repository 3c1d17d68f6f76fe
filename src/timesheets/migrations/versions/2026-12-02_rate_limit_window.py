"""Per-caller request counts per minute, shared by all workers (rate_limit_window).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rate_limit_window",
        sa.Column("caller", sa.String(255), nullable=False),
        sa.Column("window_start", sa.BigInteger(), nullable=False),  # minutes since the epoch
        sa.Column("hits", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("caller", "window_start", name="pk_rate_limit_window"),
    )


def downgrade() -> None:
    op.drop_table("rate_limit_window")
