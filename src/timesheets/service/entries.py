"""An entry's shapes, its rendered document, and the reads (lists, sync, one entry)."""

import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

from ..db import Connection, Database, Row
from ..documents import DocumentList, Page, timestamp_text
from ..errors import NotFound


class EntryStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class Actor:
    """Who makes a change: the user id, the token's subject, and the client it came through."""

    user_id: str
    subject: str
    client_id: str | None = None


@dataclass(frozen=True, slots=True)
class NewEntry:
    user_id: str
    work_date: dt.date
    project: str
    hours_cents: int
    notes: str = ""
    external_ref: str | None = None


@dataclass(frozen=True, slots=True)
class EntryFilter:
    user_id: str | None = None
    status: EntryStatus | None = None
    date_from: dt.date | None = None
    date_to: dt.date | None = None
    project: str | None = None


COLUMNS = (
    "id, user_id, work_date, project, hours_cents, notes, status, rejection_reason, "
    "created_at, updated_at, version, external_ref, deleted_at"
)
SELECT = f"SELECT {COLUMNS} FROM timesheet_entry"


@dataclass(frozen=True, slots=True)
class EntryDocument:
    """An entry as clients see it: its public JSON, as stored, with what paging and ETags need."""

    id: int
    date: str
    json: str
    version: int


BeforeCommit = Callable[[Connection, list[EntryDocument]], Awaitable[None]]
"""Called with the written documents inside the write transaction, just before it commits."""


def date_text(value: Any) -> str:
    return value if type(value) is str else str(value.isoformat())


def entry_from_row(row: Row) -> dict[str, Any]:
    """The public shape of an entry (see schemas.EntryPublic)."""
    entry_id, user_id, work_date, project, cents, notes, status, reason, created, updated = row[:10]
    return {
        "id": entry_id,
        "user_id": user_id,
        "date": work_date if type(work_date) is str else work_date.isoformat(),
        "project": project,
        "hours": cents / 100,
        "notes": notes,
        "status": status,
        "approved": status == "approved",
        "rejection_reason": reason,
        "created_at": timestamp_text(created),
        "updated_at": timestamp_text(updated),
        "version": row[10],
        "external_ref": row[11],
    }


def tombstone_from_row(row: Row) -> dict[str, Any]:
    """What sync shows of a deleted entry (see schemas.Tombstone)."""
    return {"id": row[0], "deleted": True, "version": row[10], "updated_at": timestamp_text(row[9])}


def render(row: Row) -> EntryDocument:
    entry = entry_from_row(row) if row[12] is None else tombstone_from_row(row)
    return EntryDocument(row[0], date_text(row[2]), orjson.dumps(entry).decode(), row[10])


def storing(document: EntryDocument) -> tuple[str, dict[str, Any]]:
    """The statement that stores an entry's rendered `document` beside its columns."""
    return (
        "UPDATE timesheet_entry SET body = :body WHERE id = :id",
        {"body": document.json, "id": document.id},
    )


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# --- reading ------------------------------------------------------------------------------------


async def list_entries(db: Database, *, where: EntryFilter, page: Page) -> DocumentList:
    """Entries matching `where`, oldest first (by date, then id); at most `page.limit` + 1 of them,
    so that the caller can tell whether there is a next page."""
    clauses, params = _filter_clauses(where)
    if page.after is not None:
        clauses.append("(work_date > :after_date OR (work_date = :after_date AND id > :after_id))")
        params["after_date"] = dt.date.fromisoformat(page.after[0])
        params["after_id"] = page.after[1]
    # The stored documents as bytes: the response joins them as they come, instead of decoding
    # 50 strings from UTF-8 and encoding their join again (3 % of a list's instructions).
    sql = f"SELECT {db.text_as_bytes('body')} FROM timesheet_entry WHERE "
    sql += " AND ".join(clauses) + " ORDER BY work_date, id LIMIT :limit"
    params["limit"] = page.limit + 1
    return DocumentList(await db.fetch_all(sql, params))


def _filter_clauses(where: EntryFilter) -> tuple[list[str], dict[str, Any]]:
    candidates = (
        ("user_id = :user_id", "user_id", where.user_id),
        ("status = :status", "status", where.status and where.status.value),
        ("work_date >= :date_from", "date_from", where.date_from),
        ("work_date <= :date_to", "date_to", where.date_to),
        ("project = :project", "project", where.project),
    )
    clauses = [clause for clause, _, value in candidates if value is not None]
    params = {name: value for _, name, value in candidates if value is not None}
    return ["deleted_at IS NULL", *clauses], params


async def list_changes(
    db: Database, *, user_id: str, since: dt.datetime, page: Page
) -> tuple[DocumentList, dt.datetime]:
    """`user_id`'s entries changed at or after `since`, deleted ones as tombstones, in the order of
    their changes (updated_at, id); with the time to ask from next.

    The time is taken while holding the user's lock: a change that has not committed yet takes
    its `updated_at` after that, so asking from this time next misses nothing.
    """
    params: dict[str, Any] = {"user_id": user_id, "since": since, "limit": page.limit + 1}
    sql = f"SELECT id, updated_at, {db.text_as_bytes('body')} FROM timesheet_entry"
    sql += " WHERE user_id = :user_id"
    sql += " AND updated_at >= :since"
    if page.after is not None:
        sql += " AND (updated_at > :after_at OR (updated_at = :after_at AND id > :after_id))"
        params["after_at"] = dt.datetime.fromisoformat(page.after[0])
        params["after_id"] = page.after[1]
    async with db.transaction() as tx:
        await tx.lock(f"entries:{user_id}")
        now = now_utc()
        rows = await tx.fetch_all(sql + " ORDER BY updated_at, id LIMIT :limit", params)
    return DocumentList(rows, full_timestamps=True), now


async def get_entry(db: Database | Connection, *, entry_id: int, user_id: str | None) -> Row:
    """The entry `entry_id`; with `user_id`, only if it belongs to that user.

    Raises:
        NotFound: no such entry, a deleted one, or someone else's (which must not be told apart).
    """
    row = await db.fetch_one(f"{SELECT} WHERE id = :id", {"id": entry_id})
    if row is None or row[12] is not None or (user_id is not None and row[1] != user_id):
        raise NotFound(f"no entry {entry_id}")
    return row


async def get_document(db: Database, *, entry_id: int, user_id: str) -> EntryDocument:
    """One of `user_id`'s own entries.

    Raises:
        NotFound: no such entry, a deleted one, or someone else's.
    """
    row = await db.fetch_one(
        "SELECT id, work_date, body, user_id, version, deleted_at FROM timesheet_entry "
        "WHERE id = :id",
        {"id": entry_id},
    )
    if row is None or row[3] != user_id or row[5] is not None:
        raise NotFound(f"no entry {entry_id}")
    return EntryDocument(row[0], date_text(row[1]), row[2], row[4])
