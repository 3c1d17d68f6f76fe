"""Timesheet entries: queries and state transitions. Knows SQL and the rules; nothing of HTTP.

Every write renders the entry's public JSON once and stores it beside the columns (`body`), so that
reads, lists above all, hand the stored documents out without turning rows into objects and back
into JSON: that work was most of the cost of a list (see bench/README.md). The columns stay the
truth for every rule and query; `body` is rewritten in the same transaction as any change to them,
and so is the change's audit event (audit.py).

Every transaction that changes a user's entries first locks `entries:<user_id>` (after the upload
lock, if any; several users in sorted order), then reads the entry again and takes the time. So the
checks (version, status, the 24 hour cap) see the latest committed state, and `updated_at` grows in
the order in which a user's changes commit, which sync (`list_changes`) relies on. Deleted entries
stay as tombstones (`deleted_at`): no read shows them except sync and the history.
"""

import datetime as dt
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

from . import audit
from .db import Connection, Database, Row
from .documents import DocumentList, Page, timestamp_text
from .errors import Conflict, Forbidden, NotFound, PreconditionFailed, ValidationFailed
from .inputs import MAX_HOUR_CENTS


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


_COLUMNS = (
    "id, user_id, work_date, project, hours_cents, notes, status, rejection_reason, "
    "created_at, updated_at, version, external_ref, deleted_at"
)
_SELECT = f"SELECT {_COLUMNS} FROM timesheet_entry"


@dataclass(frozen=True, slots=True)
class EntryDocument:
    """An entry as clients see it: its public JSON, as stored, with what paging and ETags need."""

    id: int
    date: str
    json: str
    version: int


BeforeCommit = Callable[[Connection, list[EntryDocument]], Awaitable[None]]
"""Called with the written documents inside the write transaction, just before it commits."""


def _date_text(value: Any) -> str:
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


def _render(row: Row) -> EntryDocument:
    entry = entry_from_row(row) if row[12] is None else tombstone_from_row(row)
    return EntryDocument(row[0], _date_text(row[2]), orjson.dumps(entry).decode(), row[10])


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


async def list_entries(db: Database, *, where: EntryFilter, page: Page) -> DocumentList:
    """Entries matching `where`, oldest first (by date, then id); at most `page.limit` + 1 of them,
    so that the caller can tell whether there is a next page."""
    clauses, params = _filter_clauses(where)
    if page.after is not None:
        clauses.append("(work_date > :after_date OR (work_date = :after_date AND id > :after_id))")
        params["after_date"] = dt.date.fromisoformat(page.after[0])
        params["after_id"] = page.after[1]
    sql = "SELECT body FROM timesheet_entry WHERE "
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
    sql = "SELECT id, updated_at, body FROM timesheet_entry WHERE user_id = :user_id"
    sql += " AND updated_at >= :since"
    if page.after is not None:
        sql += " AND (updated_at > :after_at OR (updated_at = :after_at AND id > :after_id))"
        params["after_at"] = dt.datetime.fromisoformat(page.after[0])
        params["after_id"] = page.after[1]
    async with db.transaction() as tx:
        await tx.lock(f"entries:{user_id}")
        now = _now()
        rows = await tx.fetch_all(sql + " ORDER BY updated_at, id LIMIT :limit", params)
    return DocumentList(rows, full_timestamps=True), now


async def get_entry(db: Database | Connection, *, entry_id: int, user_id: str | None) -> Row:
    """The entry `entry_id`; with `user_id`, only if it belongs to that user.

    Raises:
        NotFound: no such entry, a deleted one, or someone else's (which must not be told apart).
    """
    row = await db.fetch_one(f"{_SELECT} WHERE id = :id", {"id": entry_id})
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
    return EntryDocument(row[0], _date_text(row[1]), row[2], row[4])


# --- creating -----------------------------------------------------------------------------------


async def create_entries(
    db: Database,
    *,
    entries: list[NewEntry],
    actor: Actor,
    before_commit: BeforeCommit | None = None,
) -> list[EntryDocument]:
    """Stores every entry or none (one transaction); ids come from the database.

    Raises:
        ValidationFailed: an entry would take its user over 24 hours on its date.
    """
    async with db.transaction() as tx:
        await lock_owners(tx, (entry.user_id for entry in entries))
        now = _now()
        await _check_daily_caps(tx, entries, replacing=())
        created = [
            await _insert(tx, entry, actor=actor, now=now, action="created") for entry in entries
        ]
        if before_commit is not None:
            await before_commit(tx, created)
    return created


async def lock_owners(tx: Connection, user_ids: Iterable[str]) -> None:
    """Locks each user's entries, in sorted order (two transactions cannot deadlock on them)."""
    for user_id in sorted(set(user_ids)):
        await tx.lock(f"entries:{user_id}")


async def _insert(
    tx: Connection,
    entry: NewEntry,
    *,
    actor: Actor,
    now: dt.datetime,
    action: str,
    source: str | None = None,
) -> EntryDocument:
    """Writes the new entry whole, its document included: the id is taken first."""
    entry_id = await tx.next_id("timesheet_entry")
    document = _render(
        (entry_id, entry.user_id, entry.work_date, entry.project, entry.hours_cents, entry.notes)
        + (EntryStatus.PENDING.value, None, now, now, 1, entry.external_ref, None)
    )
    await tx.fetch_all(
        "INSERT INTO timesheet_entry (id, user_id, work_date, project, hours_cents, notes, "
        "status, created_by, created_at, updated_at, external_ref, source_client, body) VALUES "
        "(:id, :user_id, :work_date, :project, :hours_cents, :notes, 'pending', :actor, :now, "
        ":now, :external_ref, :source, :body)",
        {
            "id": entry_id,
            "user_id": entry.user_id,
            "work_date": entry.work_date,
            "project": entry.project,
            "hours_cents": entry.hours_cents,
            "notes": entry.notes,
            "actor": actor.subject,
            "now": now,
            "external_ref": entry.external_ref,
            "source": source if entry.external_ref else None,
            "body": document.json,
        },
    )
    await audit.record_event(tx, action=action, actor=actor, at=now, before=None, after=document)
    return document


# --- changing -----------------------------------------------------------------------------------


async def locked_entry(
    tx: Connection, *, entry_id: int, user_id: str | None, expect: frozenset[int] | None
) -> Row:
    """The entry, read again after locking its owner's entries.

    Raises:
        NotFound: as get_entry.  PreconditionFailed: its version is not one of `expect`.
    """
    row = await get_entry(tx, entry_id=entry_id, user_id=user_id)
    await tx.lock(f"entries:{row[1]}")
    row = await get_entry(tx, entry_id=entry_id, user_id=user_id)
    check_version(row, expect)
    return row


def check_version(row: Row, expect: frozenset[int] | None) -> None:
    """Raises PreconditionFailed unless `expect` (the versions the caller holds) is None or has
    the entry's version."""
    if expect is not None and row[10] not in expect:
        raise PreconditionFailed(f"entry {row[0]} is at version {row[10]}")


_UPDATE = (
    "UPDATE timesheet_entry SET work_date = :work_date, project = :project, "
    "hours_cents = :hours_cents, notes = :notes, status = 'pending', rejection_reason = NULL, "
    "decided_by = NULL, updated_at = :now, version = version + 1 "
    f"WHERE id = :id RETURNING {_COLUMNS}"
)


async def update_entry(
    db: Database,
    *,
    entry_id: int,
    actor: Actor,
    changes: dict[str, Any],
    expect: frozenset[int] | None = None,
) -> EntryDocument:
    """Applies `changes` to an own pending or rejected entry; a rejected one returns to pending.

    Raises:
        NotFound: no such own entry.  PreconditionFailed: not the expected version.
        Conflict: the entry is approved.
        ValidationFailed: the change would exceed 24 hours on the entry's date.
    """
    async with db.transaction() as tx:
        row = await locked_entry(tx, entry_id=entry_id, user_id=actor.user_id, expect=expect)
        if row[6] == EntryStatus.APPROVED:
            raise Conflict("an approved entry cannot be changed")
        merged = NewEntry(
            user_id=actor.user_id,
            work_date=changes.get("work_date") or dt.date.fromisoformat(_date_text(row[2])),
            project=changes.get("project") or row[3],
            hours_cents=changes.get("hours_cents") or row[4],
            notes=changes["notes"] if changes.get("notes") is not None else row[5],
        )
        await _check_daily_caps(tx, [merged], replacing=(entry_id,))
        return await _rewrite(tx, row, merged, actor=actor, action="edited")


async def _rewrite(
    tx: Connection, row: Row, entry: NewEntry, *, actor: Actor, action: str
) -> EntryDocument:
    now = _now()
    updated = await tx.fetch_one(
        _UPDATE,
        {
            "work_date": entry.work_date,
            "project": entry.project,
            "hours_cents": entry.hours_cents,
            "notes": entry.notes,
            "now": now,
            "id": row[0],
        },
    )
    assert updated is not None
    document = await _store(tx, updated)
    await audit.record_event(
        tx, action=action, actor=actor, at=now, before=_render(row), after=document
    )
    return document


async def delete_entry(
    db: Database, *, entry_id: int, actor: Actor, expect: frozenset[int] | None = None
) -> None:
    """Deletes an own pending or rejected entry, leaving a tombstone for sync and the history.

    Raises:
        NotFound: no such own entry.  PreconditionFailed: not the expected version.
        Conflict: the entry is approved.
    """
    async with db.transaction() as tx:
        row = await locked_entry(tx, entry_id=entry_id, user_id=actor.user_id, expect=expect)
        if row[6] == EntryStatus.APPROVED:
            raise Conflict("an approved entry cannot be deleted")
        now = _now()
        deleted = await tx.fetch_one(
            "UPDATE timesheet_entry SET deleted_at = :now, updated_at = :now, "
            f"version = version + 1 WHERE id = :id RETURNING {_COLUMNS}",
            {"now": now, "id": entry_id},
        )
        assert deleted is not None
        await _store(tx, deleted)
        await audit.record_event(
            tx, action="deleted", actor=actor, at=now, before=_render(row), after=None
        )


# The ORDER BY is for the planners: only the (user_id, work_date, id) index serves it, so they never
# pick the (user_id, updated_at, id) one and filter every entry of the user (PostgreSQL did, with a
# plan made while the table was small: every write then read all of the user's entries).
DAY_ENTRIES = (
    "SELECT id, hours_cents FROM timesheet_entry WHERE user_id = :user_id "
    "AND work_date = :work_date AND deleted_at IS NULL ORDER BY work_date, id"
)


async def _check_daily_caps(
    tx: Connection, entries: Iterable[NewEntry], *, replacing: Iterable[int]
) -> None:
    """Each user's entries on one date may add up to 24 hours at most, counting `entries` instead
    of the stored entries `replacing`. The caller holds the users' locks."""
    added: dict[tuple[str, dt.date], int] = {}
    for entry in entries:
        key = (entry.user_id, entry.work_date)
        added[key] = added.get(key, 0) + entry.hours_cents
    replaced = set(replacing)
    for (user_id, work_date), cents in sorted(added.items()):
        rows = await tx.fetch_all(DAY_ENTRIES, {"user_id": user_id, "work_date": work_date})
        booked = sum(int(row[1]) for row in rows if row[0] not in replaced)
        if booked + cents > MAX_HOUR_CENTS:
            raise ValidationFailed.field(
                "hours",
                f"{user_id} would have {(booked + cents) / 100:g} hours on "
                f"{work_date.isoformat()}; at most 24 are allowed",
            )


# --- deciding -----------------------------------------------------------------------------------


async def approve_entry(
    db: Database, *, entry_id: int, actor: Actor, expect: frozenset[int] | None = None
) -> EntryDocument:
    """Approves a pending entry; approving an approved one again changes nothing.

    Raises:
        NotFound: no such entry.  Forbidden: it is the approver's own.
        PreconditionFailed: not the expected version.
        Conflict: it is rejected (its owner must edit it first).
    """
    return await _decide(db, entry_id=entry_id, actor=actor, to=EntryStatus.APPROVED, expect=expect)


async def reject_entry(
    db: Database,
    *,
    entry_id: int,
    actor: Actor,
    reason: str,
    expect: frozenset[int] | None = None,
) -> EntryDocument:
    """Rejects a pending entry with a reason (rejecting a rejected one replaces the reason).

    Raises:
        NotFound: no such entry.  Forbidden: it is the approver's own.
        PreconditionFailed: not the expected version.  Conflict: it is approved.
    """
    return await _decide(
        db, entry_id=entry_id, actor=actor, to=EntryStatus.REJECTED, reason=reason, expect=expect
    )


async def reopen_entry(
    db: Database,
    *,
    entry_id: int,
    actor: Actor,
    reason: str,
    expect: frozenset[int] | None = None,
) -> EntryDocument:
    """Returns an approved or rejected entry to pending; the reason goes to the history.

    Raises:
        NotFound: no such entry.  Forbidden: it is the approver's own.
        PreconditionFailed: not the expected version.  Conflict: it is pending.
    """
    return await _decide(
        db, entry_id=entry_id, actor=actor, to=EntryStatus.PENDING, reason=reason, expect=expect
    )


_ALLOWED_DECISIONS = {
    EntryStatus.APPROVED: (EntryStatus.PENDING, EntryStatus.APPROVED),
    EntryStatus.REJECTED: (EntryStatus.PENDING, EntryStatus.REJECTED),
    EntryStatus.PENDING: (EntryStatus.APPROVED, EntryStatus.REJECTED),
}
_ACTIONS = {
    EntryStatus.APPROVED: "approved",
    EntryStatus.REJECTED: "rejected",
    EntryStatus.PENDING: "reopened",
}


async def _decide(
    db: Database,
    *,
    entry_id: int,
    actor: Actor,
    to: EntryStatus,
    expect: frozenset[int] | None,
    reason: str | None = None,
) -> EntryDocument:
    async with db.transaction() as tx:
        row = await locked_entry(tx, entry_id=entry_id, user_id=None, expect=None)
        if row[1] == actor.user_id:
            raise Forbidden("nobody may decide on their own entry")
        check_version(row, expect)
        if row[6] not in _ALLOWED_DECISIONS[to]:
            raise Conflict(f"a {row[6]} entry cannot be {_ACTIONS[to]}")
        if row[6] == to == EntryStatus.APPROVED:
            return _render(row)
        now = _now()
        updated = await tx.fetch_one(
            "UPDATE timesheet_entry SET status = :status, rejection_reason = :reason, "
            "decided_by = :approver, updated_at = :now, version = version + 1 "
            f"WHERE id = :id RETURNING {_COLUMNS}",
            {
                "status": to.value,
                "reason": reason if to == EntryStatus.REJECTED else None,
                "approver": actor.user_id if to != EntryStatus.PENDING else None,
                "now": now,
                "id": entry_id,
            },
        )
        assert updated is not None
        document = await _store(tx, updated)
        await audit.record_event(
            tx,
            action=_ACTIONS[to],
            actor=actor,
            at=now,
            before=_render(row),
            after=document,
            reason=reason,
        )
        return document
