"""Versions, soft deletes, upload references, the audit trail and idempotency keys.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

import datetime as dt
import json
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_ACTIONS = "'created', 'edited', 'deleted', 'approved', 'rejected', 'reopened', 'uploaded'"
_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("timesheet_entry") as batch:
        batch.add_column(sa.Column("version", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("external_ref", sa.String(255), nullable=True))
        batch.add_column(sa.Column("source_client", sa.String(255), nullable=True))
    # Sync reads one user's changes in (updated_at, id) order.
    op.create_index("ix_entry_user_updated", "timesheet_entry", ["user_id", "updated_at", "id"])
    # NULLs are distinct in a unique index: entries without a reference never collide.
    op.create_index(
        "ux_entry_external_ref", "timesheet_entry", ["source_client", "external_ref"], unique=True
    )
    _create_entry_event()
    _create_idempotency_key()
    _render_existing_entries()


def downgrade() -> None:
    op.drop_table("idempotency_key")
    op.drop_table("entry_event")
    op.drop_index("ux_entry_external_ref", "timesheet_entry")
    op.drop_index("ix_entry_user_updated", "timesheet_entry")
    with op.batch_alter_table("timesheet_entry") as batch:
        for column in ("source_client", "external_ref", "deleted_at", "version"):
            batch.drop_column(column)


def _create_entry_event() -> None:
    op.create_table(
        "entry_event",
        sa.Column("id", _BIG_ID, sa.Identity(always=False), primary_key=True),
        sa.Column("entry_id", _BIG_ID, sa.ForeignKey("timesheet_entry.id"), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("client_id", sa.String(255), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("before_body", sa.Text(), nullable=True),
        sa.Column("after_body", sa.Text(), nullable=True),
        sa.CheckConstraint(f"action IN ({_ACTIONS})", name="ck_event_action"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_event_entry", "entry_event", ["entry_id", "id"])


def _create_idempotency_key() -> None:
    op.create_table(
        "idempotency_key",
        sa.Column("caller", sa.String(255), primary_key=True),
        sa.Column("request_key", sa.String(255), primary_key=True),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("attempt", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("response_status", sa.Integer(), nullable=True),
        sa.Column("response_headers", sa.Text(), nullable=True),
        sa.Column("response_body", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("state IN ('in_flight', 'done')", name="ck_idempotency_state"),
    )
    op.create_index("ix_idempotency_expires", "idempotency_key", ["expires_at"])


def _render_existing_entries() -> None:
    # The entry's public shape as of this revision (version and external_ref added).
    connection = op.get_bind()
    rows = connection.execute(
        sa.text(
            "SELECT id, user_id, work_date, project, hours_cents, notes, status, "
            "rejection_reason, created_at, updated_at, version, external_ref FROM timesheet_entry"
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
        "version": row[10],
        "external_ref": row[11],
    }


def _timestamp(value: Any) -> str:
    if isinstance(value, dt.datetime):
        value = value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return f"{str(value)[:23]}Z"
