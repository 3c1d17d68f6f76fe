"""Reports on a user's own entries: totals by day, ISO week or project, and a CSV export whose
cells a spreadsheet will never run as formulas."""

import csv
import datetime as dt
import io
from typing import Any, Literal

from .db import Database
from .documents import timestamp_text

GroupBy = Literal["day", "week", "project"]
CSV_COLUMNS = (
    "id",
    "date",
    "project",
    "hours",
    "notes",
    "status",
    "rejection_reason",
    "created_at",
    "updated_at",
)
# OWASP "CSV Injection": a cell starting with one of these may be read as a formula.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _own(
    user_id: str, date_from: dt.date | None, date_to: dt.date | None
) -> tuple[str, dict[str, Any]]:
    sql = " FROM timesheet_entry WHERE user_id = :user_id AND deleted_at IS NULL"
    params: dict[str, Any] = {"user_id": user_id}
    if date_from is not None:
        sql += " AND work_date >= :date_from"
        params["date_from"] = date_from
    if date_to is not None:
        sql += " AND work_date <= :date_to"
        params["date_to"] = date_to
    return sql, params


def _date_text(value: Any) -> str:
    return value if type(value) is str else str(value.isoformat())


def _week(day: str) -> str:
    year, week, _ = dt.date.fromisoformat(day).isocalendar()
    return f"{year}-W{week:02d}"


async def summarize(
    db: Database,
    *,
    user_id: str,
    group_by: GroupBy,
    date_from: dt.date | None = None,
    date_to: dt.date | None = None,
) -> dict[str, Any]:
    """Hours and entry counts of `user_id`'s entries (any status) in the date range, in total and
    per group, groups in ascending order."""
    where, params = _own(user_id, date_from, date_to)
    column = "project" if group_by == "project" else "work_date"
    rows = await db.fetch_all(
        f"SELECT {column}, SUM(hours_cents), COUNT(*){where} GROUP BY {column} ORDER BY {column}",
        params,
    )
    groups: dict[str, list[int]] = {}
    for key, cents, count in rows:
        name = key if group_by == "project" else _date_text(key)
        totals = groups.setdefault(_week(name) if group_by == "week" else name, [0, 0])
        totals[0] += int(cents)
        totals[1] += int(count)
    return {
        "group_by": group_by,
        "from": date_from and date_from.isoformat(),
        "to": date_to and date_to.isoformat(),
        "hours": sum(cents for cents, _ in groups.values()) / 100,
        "entries": sum(count for _, count in groups.values()),
        "groups": [
            {"key": key, "hours": cents / 100, "entries": count}
            for key, (cents, count) in groups.items()
        ],
    }


async def export_csv(
    db: Database, *, user_id: str, date_from: dt.date | None = None, date_to: dt.date | None = None
) -> str:
    """`user_id`'s entries as CSV (RFC 4180, a header row), oldest first; text cells that start
    like a formula get a leading apostrophe, which spreadsheets show as text."""
    where, params = _own(user_id, date_from, date_to)
    rows = await db.fetch_all(
        "SELECT id, work_date, project, hours_cents, notes, status, rejection_reason, "
        f"created_at, updated_at{where} ORDER BY work_date, id",
        params,
    )
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        entry_id, day, project, cents, notes, status, reason, created, updated = row
        writer.writerow(
            [
                entry_id,
                _date_text(day),
                neutralise(project),
                f"{cents / 100:g}",
                neutralise(notes),
                status,
                neutralise(reason or ""),
                timestamp_text(created),
                timestamp_text(updated),
            ]
        )
    return out.getvalue()


def neutralise(cell: str) -> str:
    """The cell, prefixed with `'` when a spreadsheet would read it as a formula."""
    return "'" + cell if cell.startswith(_FORMULA_STARTS) else cell
