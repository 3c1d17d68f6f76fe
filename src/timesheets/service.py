"""Timesheet entries: queries and state transitions. Knows SQL and the rules; nothing of HTTP.

Every write renders the entry's public JSON once and stores it beside the columns (`body`), so that
reads, lists above all, hand the stored documents out without turning rows into objects and back
into JSON: that work was most of the cost of a list (see bench/README.md). The columns stay the
truth for every rule and query; `body` is rewritten in the same transaction as any change to them.
"""

import base64
import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

from .db import Connection, Database, Row
from .errors import Conflict, Forbidden, NotFound, ValidationFailed
from .inputs import MAX_HOUR_CENTS


class EntryStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class NewEntry:
    user_id: str
    work_date: dt.date
    project: str
    hours_cents: int
    notes: str = ""


@dataclass(frozen=True, slots=True)
class EntryFilter:
    user_id: str | None = None
    status: EntryStatus | None = None
    date_from: dt.date | None = None
    date_to: dt.date | None = None
    project: str | None = None


@dataclass(frozen=True, slots=True)
class Page:
    limit: int
    after: tuple[str, int] | None = None  # (date, id) of the last entry already seen


_COLUMNS = (
    "id, user_id, work_date, project, hours_cents, notes, status, rejection_reason, "
    "created_at, updated_at"
)
_SELECT = f"SELECT {_COLUMNS} FROM timesheet_entry"


@dataclass(frozen=True, slots=True)
class EntryDocument:
    """An entry as clients see it: its public JSON, as stored, with what paging needs."""

    id: int
    date: str
    json: str


def _date_text(value: Any) -> str:
    return value if type(value) is str else str(value.isoformat())


def _timestamp_text(value: Any) -> str:
    # Stored with microseconds (text in SQLite, timestamptz in PostgreSQL); shown with
    # milliseconds and a Z, which every client's parser reads.
    if type(value) is not str:
        value = value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return f"{value[:23]}Z"


def entry_from_row(row: Row) -> dict[str, Any]:
    """The public shape of an entry (see schemas.EntryPublic). On the hot path of every list."""
    entry_id, user_id, work_date, project, cents, notes, status, reason, created, updated = row
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
        "created_at": _timestamp_text(created),
        "updated_at": _timestamp_text(updated),
    }


def _render(row: Row) -> EntryDocument:
    entry = entry_from_row(row)
    return EntryDocument(entry["id"], entry["date"], orjson.dumps(entry).decode())


async def _store(tx: Connection, row: Row) -> EntryDocument:
    """Renders the entry whose columns `row` holds, and stores its document beside them."""
    document = _render(row)
    await tx.fetch_all(
        "UPDATE timesheet_entry SET body = :body WHERE id = :id",
        {"body": document.json, "id": document.id},
    )
    return document


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# --- reading ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DocumentList:
    """Stored documents in list order, kept as the driver's rows: (id, date, body)."""

    rows: list[Row]

    def __len__(self) -> int:
        return len(self.rows)

    def bodies(self, limit: int) -> list[str]:
        return [row[2] for row in self.rows[:limit]]

    def position(self, index: int) -> tuple[str, int]:
        """The (date, id) of the entry at `index`: where a page that ends there resumes."""
        row = self.rows[index]
        return row[1], row[0]


async def list_entries(db: Database, *, where: EntryFilter, page: Page) -> DocumentList:
    """Entries matching `where`, oldest first (by date, then id); at most `page.limit` + 1 of them,
    so that the caller can tell whether there is a next page."""
    clauses, params = _filter_clauses(where)
    if page.after is not None:
        clauses.append("(work_date > :after_date OR (work_date = :after_date AND id > :after_id))")
        params["after_date"] = dt.date.fromisoformat(page.after[0])
        params["after_id"] = page.after[1]
    sql = "SELECT id, CAST(work_date AS TEXT), body FROM timesheet_entry"
    if clauses:
        sql += " WHERE " + " AND ".join(clauses)
    sql += " ORDER BY work_date, id LIMIT :limit"
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
    return clauses, params


async def get_entry(db: Database | Connection, *, entry_id: int, user_id: str | None) -> Row:
    """The entry `entry_id`; with `user_id`, only if it belongs to that user.

    Raises:
        NotFound: no such entry, or someone else's (which must not be told apart).
    """
    row = await db.fetch_one(f"{_SELECT} WHERE id = :id", {"id": entry_id})
    if row is None or (user_id is not None and row[1] != user_id):
        raise NotFound(f"no entry {entry_id}")
    return row


async def get_document(db: Database, *, entry_id: int, user_id: str) -> EntryDocument:
    """One of `user_id`'s own entries.

    Raises:
        NotFound: no such entry, or someone else's (which must not be told apart).
    """
    row = await db.fetch_one(
        "SELECT id, work_date, body, user_id FROM timesheet_entry WHERE id = :id", {"id": entry_id}
    )
    if row is None or row[3] != user_id:
        raise NotFound(f"no entry {entry_id}")
    return EntryDocument(row[0], _date_text(row[1]), row[2])


# --- writing ------------------------------------------------------------------------------------


async def create_entries(
    db: Database, *, entries: list[NewEntry], actor: str
) -> list[EntryDocument]:
    """Stores every entry or none (one transaction); ids come from the database.

    Raises:
        ValidationFailed: an entry would take its user over 24 hours on its date.
    """
    now = _now()
    async with db.transaction() as tx:
        await _check_daily_caps(tx, entries, exclude_id=None)
        created = []
        for entry in entries:
            row = await tx.fetch_one(
                "INSERT INTO timesheet_entry (user_id, work_date, project, hours_cents, notes, "
                "status, created_by, created_at, updated_at) VALUES (:user_id, :work_date, "
                ":project, :hours_cents, :notes, 'pending', :actor, :now, :now) "
                f"RETURNING {_COLUMNS}",
                {
                    "user_id": entry.user_id,
                    "work_date": entry.work_date,
                    "project": entry.project,
                    "hours_cents": entry.hours_cents,
                    "notes": entry.notes,
                    "actor": actor,
                    "now": now,
                },
            )
            assert row is not None  # RETURNING always yields the inserted row
            created.append(await _store(tx, row))
    return created


async def update_entry(
    db: Database, *, entry_id: int, user_id: str, changes: dict[str, Any]
) -> EntryDocument:
    """Applies `changes` to an own pending or rejected entry; a rejected one returns to pending.

    Raises:
        NotFound: no such own entry.  Conflict: the entry is approved.
        ValidationFailed: the change would exceed 24 hours on the entry's date.
    """
    async with db.transaction() as tx:
        row = await get_entry(tx, entry_id=entry_id, user_id=user_id)
        if row[6] == EntryStatus.APPROVED:
            raise Conflict("an approved entry cannot be changed")
        merged = NewEntry(
            user_id=user_id,
            work_date=changes.get("work_date") or dt.date.fromisoformat(_date_text(row[2])),
            project=changes.get("project") or row[3],
            hours_cents=changes.get("hours_cents") or row[4],
            notes=changes["notes"] if changes.get("notes") is not None else row[5],
        )
        await _check_daily_caps(tx, [merged], exclude_id=entry_id)
        updated = await tx.fetch_one(
            "UPDATE timesheet_entry SET work_date = :work_date, project = :project, "
            "hours_cents = :hours_cents, notes = :notes, status = 'pending', "
            "rejection_reason = NULL, decided_by = NULL, updated_at = :now "
            f"WHERE id = :id RETURNING {_COLUMNS}",
            {
                "work_date": merged.work_date,
                "project": merged.project,
                "hours_cents": merged.hours_cents,
                "notes": merged.notes,
                "now": _now(),
                "id": entry_id,
            },
        )
        assert updated is not None
        return await _store(tx, updated)


async def delete_entry(db: Database, *, entry_id: int, user_id: str) -> None:
    """Deletes an own pending or rejected entry.

    Raises:
        NotFound: no such own entry.  Conflict: the entry is approved.
    """
    async with db.transaction() as tx:
        row = await get_entry(tx, entry_id=entry_id, user_id=user_id)
        if row[6] == EntryStatus.APPROVED:
            raise Conflict("an approved entry cannot be deleted")
        await tx.fetch_all("DELETE FROM timesheet_entry WHERE id = :id", {"id": entry_id})


async def approve_entry(db: Database, *, entry_id: int, approver: str) -> EntryDocument:
    """Approves a pending entry; approving an approved one again changes nothing.

    Raises:
        NotFound: no such entry.  Forbidden: it is the approver's own.
        Conflict: it is rejected (its owner must edit it first).
    """
    return await _decide(db, entry_id=entry_id, approver=approver, to=EntryStatus.APPROVED)


async def reject_entry(db: Database, *, entry_id: int, approver: str, reason: str) -> EntryDocument:
    """Rejects a pending entry with a reason (rejecting a rejected one replaces the reason).

    Raises:
        NotFound: no such entry.  Forbidden: it is the approver's own.
        Conflict: it is approved.
    """
    return await _decide(
        db, entry_id=entry_id, approver=approver, to=EntryStatus.REJECTED, reason=reason
    )


_ALLOWED_DECISIONS = {
    EntryStatus.APPROVED: (EntryStatus.PENDING, EntryStatus.APPROVED),
    EntryStatus.REJECTED: (EntryStatus.PENDING, EntryStatus.REJECTED),
}


async def _decide(
    db: Database, *, entry_id: int, approver: str, to: EntryStatus, reason: str | None = None
) -> EntryDocument:
    async with db.transaction() as tx:
        row = await get_entry(tx, entry_id=entry_id, user_id=None)
        if row[1] == approver:
            raise Forbidden("nobody may approve or reject their own entry")
        if row[6] not in _ALLOWED_DECISIONS[to]:
            raise Conflict(f"a {row[6]} entry cannot be {to.value}")
        if row[6] == to == EntryStatus.APPROVED:
            return _render(row)
        updated = await tx.fetch_one(
            "UPDATE timesheet_entry SET status = :status, rejection_reason = :reason, "
            f"decided_by = :approver, updated_at = :now WHERE id = :id RETURNING {_COLUMNS}",
            {
                "status": to.value,
                "reason": reason,
                "approver": approver,
                "now": _now(),
                "id": entry_id,
            },
        )
        assert updated is not None
        return await _store(tx, updated)


async def _check_daily_caps(
    tx: Connection, entries: Iterable[NewEntry], *, exclude_id: int | None
) -> None:
    """Each user's entries on one date may add up to 24 hours at most, counting `entries`."""
    added: dict[tuple[str, dt.date], int] = {}
    for entry in entries:
        key = (entry.user_id, entry.work_date)
        added[key] = added.get(key, 0) + entry.hours_cents
    # Sorted, so that two transactions lock the same days in the same order and cannot deadlock.
    for (user_id, work_date), cents in sorted(added.items()):
        await tx.lock(f"entry-day:{user_id}:{work_date.isoformat()}")
        row = await tx.fetch_one(
            "SELECT COALESCE(SUM(hours_cents), 0) FROM timesheet_entry "
            "WHERE user_id = :user_id AND work_date = :work_date AND id != :exclude",
            {"user_id": user_id, "work_date": work_date, "exclude": exclude_id or 0},
        )
        booked = int(row[0]) if row else 0
        if booked + cents > MAX_HOUR_CENTS:
            raise ValidationFailed.field(
                "hours",
                f"{user_id} would have {(booked + cents) / 100:g} hours on "
                f"{work_date.isoformat()}; at most 24 are allowed",
            )


# --- cursors ------------------------------------------------------------------------------------


def encode_cursor(position: tuple[str, int]) -> str:
    raw = f"{position[0]}|{position[1]}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, int]:
    """Raises ValidationFailed (field `cursor`) for anything this service did not hand out."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        date_text, id_text = raw.split("|")
        dt.date.fromisoformat(date_text)
        entry_id = int(id_text)
        if not 0 <= entry_id < 2**63:
            raise ValueError(id_text)
        return date_text, entry_id
    except (ValueError, UnicodeDecodeError):
        raise ValidationFailed.field(
            "cursor", "cursor is not one this service handed out"
        ) from None
