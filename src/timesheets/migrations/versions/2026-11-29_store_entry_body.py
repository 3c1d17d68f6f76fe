"""Store each entry's public JSON beside its columns (timesheet_entry.body).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

import datetime as dt
import json
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("timesheet_entry") as batch:
        batch.add_column(sa.Column("body", sa.Text(), nullable=False, server_default=""))
    _render_existing_entries()


def downgrade() -> None:
    with op.batch_alter_table("timesheet_entry") as batch:
        batch.drop_column("body")


def _render_existing_entries() -> None:
    # The entry's public shape as of this revision; later revisions re-render if it changes.
    connection = op.get_bind()
    rows = connection.execute(
        sa.text(
            "SELECT id, user_id, work_date, project, hours_cents, notes, status, "
            "rejection_reason, created_at, updated_at FROM timesheet_entry"
        )
    ).fetchall()
    for row in rows:
        connection.execute(
            sa.text("UPDATE timesheet_entry SET body = :body WHERE id = :id"),
            {"body": json.dumps(_document(row), separators=(",", ":")), "id": row[0]},
        )


def _document(row: Any) -> dict[str, Any]:
    return {
        "id": row[0],
        "user_id": row[1],
        "date": str(row[2])[:10],
        "project": row[3],
        "hours": row[4] / 100,
        "notes": row[5],
        "status": row[6],
        "approved": row[6] == "approved",
        "rejection_reason": row[7],
        "created_at": _timestamp(row[8]),
        "updated_at": _timestamp(row[9]),
    }


def _timestamp(value: Any) -> str:
    if isinstance(value, dt.datetime):
        value = value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return f"{str(value)[:23]}Z"
