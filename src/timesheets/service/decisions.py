"""An approver's decisions: approve, reject, reopen."""

from .. import audit
from ..db import Database
from ..errors import Conflict, Forbidden
from .entries import COLUMNS, Actor, EntryDocument, EntryStatus, now_utc, render, storing
from .writes import check_version, locked_entry

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
            article = "an" if row[6] == EntryStatus.APPROVED else "a"
            raise Conflict(f"{article} {row[6]} entry cannot be {_ACTIONS[to]}")
        if row[6] == to == EntryStatus.APPROVED:
            return render(row)
        now = now_utc()
        updated = await tx.fetch_one(
            "UPDATE timesheet_entry SET status = :status, rejection_reason = :reason, "
            "decided_by = :approver, updated_at = :now, version = version + 1 "
            f"WHERE id = :id RETURNING {COLUMNS}",
            {
                "status": to.value,
                "reason": reason if to == EntryStatus.REJECTED else None,
                "approver": actor.user_id if to != EntryStatus.PENDING else None,
                "now": now,
                "id": entry_id,
            },
        )
        assert updated is not None
        document = render(updated)
        await audit.record_event(
            tx,
            action=_ACTIONS[to],
            actor=actor,
            at=now,
            before=render(row),
            after=document,
            reason=reason,
            change=storing(document),
        )
        return document
