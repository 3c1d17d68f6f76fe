"""Pages of stored entry documents: the rows as the driver hands them out, where a page ends, and
the opaque cursors that resume after it."""

import base64
import datetime as dt
from dataclasses import dataclass
from typing import Any

import orjson

from .db import Row, utc_text
from .errors import ValidationFailed


def timestamp_text(value: Any) -> str:
    """A stored timestamp as documents show it: UTC, milliseconds and a Z, which every client's
    parser reads. (Stored with microseconds: text in SQLite, timestamptz in PostgreSQL.)"""
    return f"{full_timestamp_text(value)[:23]}Z"


def full_timestamp_text(value: Any) -> str:
    """A stored timestamp with all its microseconds, UTC, with a Z."""
    if type(value) is str:
        return value
    return utc_text(value)


@dataclass(frozen=True, slots=True)
class Page:
    limit: int
    after: tuple[str, int] | None = None  # (date or timestamp, id) of the last entry already seen


@dataclass(frozen=True, slots=True)
class DocumentList:
    """Stored documents in list order, kept as the driver's rows: (body,) for lists by date, and
    (id, change time, body) for sync (`full_timestamps`); the body as UTF-8 bytes.

    Lists read the body alone: two more columns cost a third more than the whole query
    (bench/README.md), and only a page's last entry needs its date and id, from its document.
    """

    rows: list[Row]
    full_timestamps: bool = False

    def __len__(self) -> int:
        return len(self.rows)

    def bodies(self, limit: int) -> list[bytes]:
        return [row[-1] for row in self.rows[:limit]]

    def position(self, index: int) -> tuple[str, int]:
        """The (date or time, id) of the entry at `index`: where a page that ends there resumes."""
        row = self.rows[index]
        if self.full_timestamps:
            return full_timestamp_text(row[1]), row[0]
        document = orjson.loads(row[0])
        return document["date"], document["id"]


def encode_cursor(position: tuple[str, int]) -> str:
    raw = f"{position[0]}|{position[1]}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, *, timestamps: bool = False) -> tuple[str, int]:
    """Raises ValidationFailed (field `cursor`) for anything this service did not hand out."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        position, id_text = raw.split("|")
        if timestamps:
            if not position.endswith("Z"):
                raise ValueError(position)
            dt.datetime.fromisoformat(position)
        else:
            dt.date.fromisoformat(position)
        entry_id = int(id_text)
        if not 0 <= entry_id < 2**63:
            raise ValueError(id_text)
        return position, entry_id
    except (ValueError, UnicodeDecodeError):
        raise ValidationFailed.field(
            "cursor", "cursor is not one this service handed out"
        ) from None
