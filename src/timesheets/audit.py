"""The audit trail: one append-only event per change of an entry, written by the service in the
same transaction as the change (so there is never one without the other), and read as a history.

Events are only ever inserted; nothing in the service updates or deletes them.
"""

import datetime as dt
from typing import TYPE_CHECKING, Any

import orjson

from .db import Connection, Database, Params
from .documents import timestamp_text
from .errors import NotFound

if TYPE_CHECKING:
    from .service import Actor, EntryDocument


async def record_event(
    tx: Connection,
    *,
    action: str,
    actor: "Actor",
    at: dt.datetime,
    before: "EntryDocument | None",
    after: "EntryDocument | None",
    reason: str | None = None,
    change: tuple[str, Params] | None = None,
) -> None:
    """Appends the event of a change: the entry's documents before and after it; with `change`,
    the statement that writes the change (whose result is not needed) goes with it, in one round
    trip on PostgreSQL."""
    entry = after or before
    assert entry is not None
    event = (
        "INSERT INTO entry_event (entry_id, action, actor, client_id, at, reason, before_body, "
        "after_body) VALUES (:entry_id, :action, :actor, :client_id, :at, :reason, :before, "
        ":after)",
        {
            "entry_id": entry.id,
            "action": action,
            "actor": actor.user_id,
            "client_id": actor.client_id,
            "at": at,
            "reason": reason,
            "before": before and before.json,
            "after": after and after.json,
        },
    )
    await tx.write_all([change, event] if change is not None else [event])


async def list_events(db: Database, *, entry_id: int, owner: str | None) -> list[dict[str, Any]]:
    """The history of an entry (deleted ones too), oldest first; with `owner`, only if the entry
    is that user's.

    Raises:
        NotFound: no such entry, or someone else's when `owner` is given.
    """
    row = await db.fetch_one("SELECT user_id FROM timesheet_entry WHERE id = :id", {"id": entry_id})
    if row is None or (owner is not None and row[0] != owner):
        raise NotFound(f"no entry {entry_id}")
    rows = await db.fetch_all(
        "SELECT id, entry_id, action, actor, client_id, at, reason, before_body, after_body "
        "FROM entry_event WHERE entry_id = :entry_id ORDER BY id",
        {"entry_id": entry_id},
    )
    return [_event(row) for row in rows]


def _event(row: Any) -> dict[str, Any]:
    event_id, entry_id, action, actor, client_id, at, reason, before, after = row
    return {
        "id": event_id,
        "entry_id": entry_id,
        "action": action,
        "actor": actor,
        "client_id": client_id,
        "at": timestamp_text(at),
        "reason": reason,
        "before": orjson.loads(before) if before is not None else None,
        "after": orjson.loads(after) if after is not None else None,
    }
