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

The package: `entries` (an entry's shapes, its document, the reads), `writes` (creating, changing,
deleting, the daily cap) and `decisions` (approving, rejecting, reopening).
"""

from .decisions import approve_entry, reject_entry, reopen_entry
from .entries import (
    Actor,
    BeforeCommit,
    EntryDocument,
    EntryFilter,
    EntryStatus,
    NewEntry,
    entry_from_row,
    get_document,
    get_entry,
    list_changes,
    list_entries,
)
from .writes import create_entries, delete_entry, update_entry

__all__ = [
    "Actor",
    "BeforeCommit",
    "EntryDocument",
    "EntryFilter",
    "EntryStatus",
    "NewEntry",
    "approve_entry",
    "create_entries",
    "delete_entry",
    "entry_from_row",
    "get_document",
    "get_entry",
    "list_changes",
    "list_entries",
    "reject_entry",
    "reopen_entry",
    "update_entry",
]
