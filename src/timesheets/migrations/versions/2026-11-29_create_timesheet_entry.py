"""Create timesheet_entry.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_STATUSES = "'pending', 'approved', 'rejected'"


def upgrade() -> None:
    op.create_table(
        "timesheet_entry",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            primary_key=True,
        ),
        sa.Column("user_id", sa.String(255), nullable=False),
        sa.Column("work_date", sa.Date(), nullable=False),
        sa.Column("project", sa.String(200), nullable=False),
        # Hundredths of an hour: sums stay exact, so the 24-hour cap is never off by a rounding.
        sa.Column("hours_cents", sa.Integer(), nullable=False),
        sa.Column("notes", sa.Text(), nullable=False, server_default=""),
        sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("rejection_reason", sa.Text(), nullable=True),
        sa.Column("created_by", sa.String(255), nullable=False),
        sa.Column("decided_by", sa.String(255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("hours_cents > 0 AND hours_cents <= 2400", name="ck_entry_hours"),
        sa.CheckConstraint(f"status IN ({_STATUSES})", name="ck_entry_status"),
        # Ids are never reused, even after the newest entry is deleted.
        sqlite_autoincrement=True,
    )
    op.create_index("ix_entry_user_date", "timesheet_entry", ["user_id", "work_date", "id"])
    op.create_index("ix_entry_status_date", "timesheet_entry", ["status", "work_date", "id"])


def downgrade() -> None:
    op.drop_table("timesheet_entry")
