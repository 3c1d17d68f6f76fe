"""Request and response shapes. The models validate input strictly and feed the OpenAPI document."""

import datetime as dt
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from .errors import FieldError, ValidationFailed
from .inputs import InputError, parse_hours, parse_work_date


def _as_custom_error(parse: Any) -> Any:
    def validate(value: Any) -> Any:
        try:
            return parse(value)
        except InputError as exc:
            raise PydanticCustomError("invalid_value", str(exc)) from None

    return validate


WorkDate = Annotated[
    dt.date,
    BeforeValidator(_as_custom_error(parse_work_date)),
    WithJsonSchema(
        {
            "type": "string",
            "description": "YYYY-MM-DD, an ISO 8601 date-time (its date as written), or Java's "
            "Date.toString() (Mon Jul 10 14:32:11 GMT+02:00 2017)",
            "examples": ["2017-07-10"],
        }
    ),
]
HourCents = Annotated[
    int,
    BeforeValidator(_as_custom_error(parse_hours)),
    WithJsonSchema(
        {
            "oneOf": [
                {"type": "number", "exclusiveMinimum": 0, "maximum": 24, "multipleOf": 0.01},
                {"type": "string", "pattern": r"^(\d+(\.\d+)?|\.\d+)$"},
            ],
            "description": "hours worked: more than 0, at most 24, at most two decimals",
            "examples": [7.5],
        }
    ),
]


def _no_nul(value: str) -> str:
    # PostgreSQL text cannot hold U+0000 (the driver fails); refuse it on every engine alike.
    if "\x00" in value:
        raise PydanticCustomError("invalid_value", "must not contain NUL characters")
    return value


_Text = AfterValidator(_no_nul)
Project = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), _Text
]
Notes = Annotated[str, StringConstraints(max_length=2000), _Text]
UserId = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255), _Text
]
ExternalRef = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255), _Text
]
Reason = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000), _Text
]


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EntryCreate(_Input):
    """A new entry for the caller. Read-only fields (id, user_id, status, ...) are ignored."""

    project: Project
    date: WorkDate
    hours: HourCents
    notes: Notes | None = None


class EntryUpload(EntryCreate):
    """An entry uploaded by a batch client on behalf of `user_id` (an external employee id)."""

    user_id: UserId
    external_ref: ExternalRef | None = Field(
        None,
        description="the entry's id in the uploading system; unique per uploading client, so "
        "that a re-run answers (or updates) the stored entry instead of creating it twice",
    )


class EntryUpdate(_Input):
    """The fields to change; at least one."""

    project: Project | None = None
    date: WorkDate | None = None
    hours: HourCents | None = None
    notes: Notes | None = None


class Rejection(_Input):
    reason: Reason


class Reopening(_Input):
    reason: Reason


class Approval(_Input):
    """`PUT /approvals/{id}` takes no body, an empty one, or `{}`."""


class EntryPublic(BaseModel):
    """An entry as every response shows it (hours as a JSON number)."""

    id: int
    user_id: str
    date: dt.date
    project: str
    hours: float
    notes: str
    status: Literal["pending", "approved", "rejected"]
    approved: bool = Field(description="status == 'approved', kept for the reference clients")
    rejection_reason: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    version: int = Field(description="1 when created, one more on every change; see the ETag")
    external_ref: str | None = Field(description="the upload's reference, if it gave one")


class Tombstone(BaseModel):
    """What sync (`updated_since`) shows of a deleted entry."""

    id: int
    deleted: Literal[True]
    version: int
    updated_at: dt.datetime


class EntryEvent(BaseModel):
    """One change of an entry, as its history shows it."""

    id: int
    entry_id: int
    action: Literal["created", "edited", "deleted", "approved", "rejected", "reopened", "uploaded"]
    actor: str = Field(
        description="the user id (or, for a machine token, the subject) of the caller"
    )
    client_id: str | None = Field(description="the token's azp or client_id")
    at: dt.datetime
    reason: str | None = Field(description="of a rejection or a reopening")
    before: dict[str, Any] | None = Field(description="the entry before the change")
    after: dict[str, Any] | None = Field(description="the entry after it (deleted: null)")


class SummaryGroup(BaseModel):
    key: str = Field(description="the day (YYYY-MM-DD), ISO week (2017-W28) or project")
    hours: float
    entries: int


class Summary(BaseModel):
    """Totals of the caller's own entries."""

    group_by: Literal["day", "week", "project"]
    from_: dt.date | None = Field(alias="from")
    to: dt.date | None
    hours: float
    entries: int
    groups: list[SummaryGroup]


class Me(BaseModel):
    """Who the token says the caller is, and what it may do."""

    user_id: str
    subject: str
    client_id: str | None
    scopes: list[str] = Field(description="sorted")


class ErrorBody(BaseModel):
    error: str
    message: str
    detail: str | None = None
    errors: list[dict[str, str]] | None = None


M = TypeVar("M", bound=BaseModel)

READ_ONLY_FIELDS = (
    "id",
    "user_id",
    "status",
    "approved",
    "rejection_reason",
    "created_at",
    "updated_at",
    "version",
    "external_ref",
    "deleted",
)


def validate(model: type[M], data: Any, *, prefix: str = "") -> M:
    """`data` as `model`, or ValidationFailed naming each field at fault."""
    if not isinstance(data, dict):
        raise ValidationFailed.field(prefix or "body", "must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ValidationFailed([_field_error(error, prefix) for error in exc.errors()]) from None


def _field_error(error: Any, prefix: str) -> FieldError:
    location = ".".join(str(part) for part in error["loc"]) or "body"
    field = f"{prefix}.{location}" if prefix else location
    if error["type"] == "missing":
        return FieldError(field, f"{location} is required")
    if error["type"] == "extra_forbidden":
        return FieldError(field, f"{location} is not a known field")
    return FieldError(field, f"{location} {_lowercase_first(error['msg'])}")


def _lowercase_first(message: str) -> str:
    if message[:1].isupper() and not message[1:2].isupper():
        return message[0].lower() + message[1:]
    return message
