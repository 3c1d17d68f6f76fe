"""Creating, changing and deleting entries, under their owners' locks; the daily cap."""

import datetime as dt
from collections.abc import Iterable
from typing import Any

from .. import audit
from ..db import Connection, Database, Row, utc_text
from ..errors import Conflict, PreconditionFailed, ValidationFailed
from ..inputs import MAX_HOUR_CENTS
from .entries import (
    COLUMNS,
    Actor,
    BeforeCommit,
    EntryDocument,
    EntryStatus,
    NewEntry,
    date_text,
    get_entry,
    now_utc,
    render,
    storing,
)

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
        now = now_utc()
        await check_daily_caps(tx, entries, replacing=())
        created = [
            await insert_entry(tx, entry, actor=actor, now=now, action="created")
            for entry in entries
        ]
        if before_commit is not None:
            await before_commit(tx, created)
    return created


async def lock_owners(tx: Connection, user_ids: Iterable[str]) -> None:
    """Locks each user's entries, in sorted order (two transactions cannot deadlock on them)."""
    for user_id in sorted(set(user_ids)):
        await tx.lock(f"entries:{user_id}")


async def insert_entry(
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
    stamp = utc_text(now)  # created and updated: formatted once
    document = render(
        (entry_id, entry.user_id, entry.work_date, entry.project, entry.hours_cents, entry.notes)
        + (EntryStatus.PENDING.value, None, stamp, stamp, 1, entry.external_ref, None)
    )
    inserting = (
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
    await audit.record_event(
        tx, action=action, actor=actor, at=now, before=None, after=document, change=inserting
    )
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
    f"WHERE id = :id RETURNING {COLUMNS}"
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
            work_date=changes.get("work_date") or dt.date.fromisoformat(date_text(row[2])),
            project=changes.get("project") or row[3],
            hours_cents=changes.get("hours_cents") or row[4],
            notes=changes["notes"] if changes.get("notes") is not None else row[5],
        )
        await check_daily_caps(tx, [merged], replacing=(entry_id,))
        return await rewrite_entry(tx, row, merged, actor=actor, action="edited")


async def rewrite_entry(
    tx: Connection, row: Row, entry: NewEntry, *, actor: Actor, action: str
) -> EntryDocument:
    now = now_utc()
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
    document = render(updated)
    await audit.record_event(
        tx,
        action=action,
        actor=actor,
        at=now,
        before=render(row),
        after=document,
        change=storing(document),
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
        now = now_utc()
        deleted = await tx.fetch_one(
            "UPDATE timesheet_entry SET deleted_at = :now, updated_at = :now, "
            f"version = version + 1 WHERE id = :id RETURNING {COLUMNS}",
            {"now": now, "id": entry_id},
        )
        assert deleted is not None
        await audit.record_event(
            tx,
            action="deleted",
            actor=actor,
            at=now,
            before=render(row),
            after=None,
            change=storing(render(deleted)),  # the tombstone's document
        )


# The ORDER BY is for the planners: only the (user_id, work_date, id) index serves it, so they never
# pick the (user_id, updated_at, id) one and filter every entry of the user (PostgreSQL did, with a
# plan made while the table was small: every write then read all of the user's entries).
DAY_ENTRIES = (
    "SELECT id, hours_cents FROM timesheet_entry WHERE user_id = :user_id "
    "AND work_date = :work_date AND deleted_at IS NULL ORDER BY work_date, id"
)


async def check_daily_caps(
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
