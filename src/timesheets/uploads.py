"""Batch uploads: entries on behalf of users, all or nothing, with optional `external_ref`s that
make a re-run of an import create nothing twice.

A reference is unique per uploading client (the token's `azp`/`client_id`, else its subject). An
upload that names a stored reference answers that stored entry, unchanged when the upload carries
the same user, date, project, hours and notes. When those differ, the upload changes the stored
entry as an edit would (it returns to pending), unless the entry is approved (the approval lock),
deleted, or another user's: then the whole upload is refused with 409 and nothing is stored.
"""

import datetime as dt

from .db import Connection, Database, Row
from .errors import Conflict, ValidationFailed
from .service.entries import (
    COLUMNS,
    Actor,
    BeforeCommit,
    EntryDocument,
    EntryStatus,
    NewEntry,
    date_text,
    now_utc,
    render,
)
from .service.writes import check_daily_caps, insert_entry, lock_owners, rewrite_entry


async def upload_entries(
    db: Database,
    *,
    entries: list[NewEntry],
    actor: Actor,
    before_commit: BeforeCommit | None = None,
) -> list[EntryDocument]:
    """Stores (or, by reference, finds or changes) every entry, or none; answers in input order.

    Raises:
        ValidationFailed: a reference given twice, or a user over 24 hours on a date.
        Conflict: a reference names an approved, deleted or another user's entry, with changes.
    """
    source = actor.client_id or actor.subject
    by_ref = _by_ref(entries)
    async with db.transaction() as tx:
        # References are looked up, then inserted: one upload of this client at a time.
        await tx.lock(f"upload:{source}")
        await lock_owners(tx, (entry.user_id for entry in entries))
        stored = await _stored(tx, source, by_ref)
        changed = {ref for ref, row in stored.items() if _changes(row, by_ref[ref])}
        for ref in changed:
            _check_changeable(ref, stored[ref], by_ref[ref])
        written = [e for e in entries if e.external_ref is None or e.external_ref not in stored]
        written += [by_ref[ref] for ref in changed]
        await check_daily_caps(tx, written, replacing=[stored[ref][0] for ref in changed])
        now = now_utc()
        answers: list[EntryDocument] = []
        for entry in entries:
            ref = entry.external_ref or ""
            if ref not in stored:
                answers.append(
                    await insert_entry(
                        tx, entry, actor=actor, now=now, action="uploaded", source=source
                    )
                )
            elif ref in changed:
                answers.append(
                    await rewrite_entry(tx, stored[ref], entry, actor=actor, action="uploaded")
                )
            else:
                answers.append(render(stored[ref]))
        if before_commit is not None:
            await before_commit(tx, answers)
    return answers


def _by_ref(entries: list[NewEntry]) -> dict[str, NewEntry]:
    """The entries that carry a reference, by reference.

    Raises:
        ValidationFailed: a reference is given twice.
    """
    by_ref: dict[str, NewEntry] = {}
    for index, entry in enumerate(entries):
        if entry.external_ref is None:
            continue
        if entry.external_ref in by_ref:
            raise ValidationFailed.field(
                f"[{index}].external_ref", f"external_ref {entry.external_ref} is given twice"
            )
        by_ref[entry.external_ref] = entry
    return by_ref


async def _stored(tx: Connection, source: str, refs: dict[str, NewEntry]) -> dict[str, Row]:
    """The stored entries (deleted ones too) of `source`'s references."""
    stored: dict[str, Row] = {}
    for ref in refs:
        row = await tx.fetch_one(
            f"SELECT {COLUMNS} FROM timesheet_entry "
            "WHERE source_client = :source AND external_ref = :ref",
            {"source": source, "ref": ref},
        )
        if row is not None:
            stored[ref] = row
    return stored


def _changes(row: Row, entry: NewEntry) -> bool:
    stored = (row[1], dt.date.fromisoformat(date_text(row[2])), row[3], row[4], row[5])
    given = (entry.user_id, entry.work_date, entry.project, entry.hours_cents, entry.notes)
    return stored != given or row[12] is not None


def _check_changeable(ref: str, row: Row, entry: NewEntry) -> None:
    if row[12] is not None:
        raise Conflict(f"the entry of external_ref {ref} was deleted")
    if row[1] != entry.user_id:
        raise Conflict(f"external_ref {ref} belongs to another user's entry")
    if row[6] == EntryStatus.APPROVED:
        raise Conflict(f"the entry of external_ref {ref} is approved and cannot be changed")
