"""The unique index of uploads' references holds only entries that have one (partial_external_ref).

Most entries have no `external_ref` (only uploads give one), and every create used to add a row of
NULLs to this index: a fifth B-tree written inside SQLite's single write lock. NULLs never
conflicted (in SQLite and PostgreSQL they are distinct), so uniqueness is unchanged; the upload's
lookup (`source_client = ... AND external_ref = ...`) implies `external_ref IS NOT NULL`, so both
planners still use the index for it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_NAME = "ux_entry_external_ref"
_COLUMNS = ["source_client", "external_ref"]


def upgrade() -> None:
    op.drop_index(_NAME, "timesheet_entry")
    where = sa.text("external_ref IS NOT NULL")
    op.create_index(
        _NAME,
        "timesheet_entry",
        _COLUMNS,
        unique=True,
        sqlite_where=where,
        postgresql_where=where,
    )


def downgrade() -> None:
    op.drop_index(_NAME, "timesheet_entry")
    op.create_index(_NAME, "timesheet_entry", _COLUMNS, unique=True)
