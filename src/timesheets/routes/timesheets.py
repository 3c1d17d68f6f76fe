"""/timesheets: the caller's own entries, their sync and history, and the batch upload."""

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from .. import audit, service, uploads
from ..api import etag, if_match, none_match, operation, path_id, query_date, query_timestamp
from ..auth import Principal
from ..db import utc_text
from ..errors import PayloadTooLarge, ValidationFailed
from ..http import JSONResponse, document_response, documents_response, read_payload
from ..schemas import (
    READ_ONLY_FIELDS,
    EntryCreate,
    EntryEvent,
    EntryPublic,
    EntryUpdate,
    EntryUpload,
    validate,
)
from .idempotent import respond_once
from .paging import PAGING_QUERY, page_of, paged_response

MAX_UPLOAD_ENTRIES = 1000
_FILTERS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("from", "first date, YYYY-MM-DD", {"type": "string", "format": "date"}),
    ("to", "last date, YYYY-MM-DD", {"type": "string", "format": "date"}),
    ("project", "exact project name", {"type": "string"}),
    (
        "status",
        "pending, approved or rejected",
        {"type": "string", "enum": ["pending", "approved", "rejected"]},
    ),
    (
        "updated_since",
        "sync: the entries changed at or after this RFC 3339 date-time (the X-Sync-Timestamp of "
        "the previous sync), deleted ones as tombstones, in the order of their changes; "
        "not with the other filters",
        {"type": "string", "format": "date-time"},
    ),
)


def actor(principal: Principal) -> service.Actor:
    return service.Actor(principal.user_id, principal.subject, principal.client_id)


def _new_entry(data: EntryCreate, user_id: str, ref: str | None = None) -> service.NewEntry:
    return service.NewEntry(user_id, data.date, data.project, data.hours, data.notes or "", ref)


def _writable(payload: Any, *, keep: tuple[str, ...] = ()) -> Any:
    """The payload without the read-only fields that clients echo back (the contract ignores them)."""
    if isinstance(payload, dict):
        return {
            name: value
            for name, value in payload.items()
            if name not in READ_ONLY_FIELDS or name in keep
        }
    return payload


async def _payload(request: Request) -> Any:
    return await read_payload(request, request.app.state.settings.max_body_bytes)


def entry_response(entry: service.EntryDocument, *, status_code: int = 200) -> Response:
    """One entry, with its ETag (and where it lives, when created)."""
    headers = {"ETag": etag(entry.id, entry.version)}
    if status_code == 201:
        headers["Location"] = f"/timesheets/{entry.id}"
    return document_response(entry.json, status_code=status_code, headers=headers)


def _created(entries: list[service.EntryDocument]) -> Response:
    return entry_response(entries[0], status_code=201)


@operation(
    "POST",
    "/timesheets",
    scope="create:timesheets",
    status=201,
    body=(EntryCreate,),
    response=EntryPublic,
    errors=(400, 409, 413, 415, 422),
    request_headers=("Idempotency-Key",),
    response_headers=("ETag", "Location", "Idempotent-Replayed"),
)
async def create_timesheet(request: Request, principal: Principal) -> Response:
    """Record an entry for the caller; with an Idempotency-Key, retries replay the first answer."""
    payload = await _payload(request)

    async def run(before_commit: service.BeforeCommit | None) -> list[service.EntryDocument]:
        data = validate(EntryCreate, _writable(payload))
        return await service.create_entries(
            request.app.state.db,
            entries=[_new_entry(data, principal.user_id)],
            actor=actor(principal),
            before_commit=before_commit,
        )

    return await respond_once(request, principal, payload, run, _created)


@operation(
    "GET",
    "/timesheets",
    scope="read:timesheets",
    response=EntryPublic,
    response_is_list=True,
    errors=(422,),
    query=(*_FILTERS, *PAGING_QUERY),
    response_headers=("Link", "X-Sync-Timestamp"),
)
async def list_timesheets(request: Request, principal: Principal) -> Response:
    """List the caller's own entries, oldest first; with updated_since, their changes (sync)."""
    if "updated_since" in request.query_params:
        return await _list_changes(request, principal)
    status = request.query_params.get("status")
    if status is not None and status not in service.EntryStatus.__members__.values():
        raise ValidationFailed.field("status", "status must be pending, approved or rejected")
    project = request.query_params.get("project")
    if project is not None and "\x00" in project:  # PostgreSQL text cannot hold U+0000
        raise ValidationFailed.field("project", "project must not contain NUL characters")
    where = service.EntryFilter(
        user_id=principal.user_id,
        status=service.EntryStatus(status) if status else None,
        date_from=query_date(request, "from"),
        date_to=query_date(request, "to"),
        project=project,
    )
    page = page_of(request)
    entries = await service.list_entries(request.app.state.db, where=where, page=page)
    return paged_response(request, entries, page)


async def _list_changes(request: Request, principal: Principal) -> Response:
    for name in ("from", "to", "project", "status"):
        if name in request.query_params:
            raise ValidationFailed.field(name, f"{name} cannot be combined with updated_since")
    since = query_timestamp(request, "updated_since")
    assert since is not None
    page = page_of(request, timestamps=True)
    changes, now = await service.list_changes(
        request.app.state.db, user_id=principal.user_id, since=since, page=page
    )
    response = paged_response(request, changes, page)
    response.headers["X-Sync-Timestamp"] = utc_text(now)
    return response


@operation(
    "GET",
    "/timesheets/{entry_id}",
    scope="read:timesheets",
    response=EntryPublic,
    errors=(404,),
    extra={"x-not-modified": True},
    request_headers=("If-None-Match",),
    response_headers=("ETag",),
)
async def get_timesheet(request: Request, principal: Principal) -> Response:
    """Show one of the caller's own entries; If-None-Match with its ETag answers 304."""
    entry = await service.get_document(
        request.app.state.db, entry_id=path_id(request), user_id=principal.user_id
    )
    tag = etag(entry.id, entry.version)
    if none_match(request, tag):
        return Response(status_code=304, headers={"ETag": tag})
    return entry_response(entry)


@operation(
    "PATCH",
    "/timesheets/{entry_id}",
    scope="create:timesheets",
    body=(EntryUpdate,),
    response=EntryPublic,
    errors=(404, 409, 412, 413, 415, 422),
    request_headers=("If-Match",),
    response_headers=("ETag",),
)
async def update_timesheet(request: Request, principal: Principal) -> Response:
    """Edit an own pending or rejected entry; a rejected one returns to pending."""
    entry_id = path_id(request)
    data = validate(EntryUpdate, _writable(await _payload(request)))
    changes = {
        "work_date": data.date,
        "project": data.project,
        "hours_cents": data.hours,
        "notes": data.notes,
    }
    if all(value is None for value in changes.values()):
        raise ValidationFailed.field("body", "give at least one of project, date, hours, notes")
    updated = await service.update_entry(
        request.app.state.db,
        entry_id=entry_id,
        actor=actor(principal),
        changes=changes,
        expect=if_match(request, entry_id),
    )
    return entry_response(updated)


@operation(
    "DELETE",
    "/timesheets/{entry_id}",
    scope="delete:timesheets",
    status=204,
    errors=(404, 409, 412),
    request_headers=("If-Match",),
)
async def delete_timesheet(request: Request, principal: Principal) -> Response:
    """Delete an own pending or rejected entry (sync then shows its tombstone)."""
    entry_id = path_id(request)
    await service.delete_entry(
        request.app.state.db,
        entry_id=entry_id,
        actor=actor(principal),
        expect=if_match(request, entry_id),
    )
    return Response(status_code=204)


@operation(
    "GET",
    "/timesheets/{entry_id}/history",
    scope="read:timesheets",
    also=("approve:timesheets",),
    response=EntryEvent,
    response_is_list=True,
    errors=(404,),
)
async def get_timesheet_history(request: Request, principal: Principal) -> Response:
    """Show the audit trail of an entry, oldest first: its owner's, or any to an approver."""
    owner = None if principal.has_scope("approve:timesheets") else principal.user_id
    events = await audit.list_events(request.app.state.db, entry_id=path_id(request), owner=owner)
    return JSONResponse(events)


@operation(
    "POST",
    "/timesheets/upload",
    scope="batch:upload",
    status=201,
    body=(EntryUpload,),
    response=EntryPublic,
    errors=(400, 409, 413, 415, 422),
    extra={"x-accepts-array": True},
    request_headers=("Idempotency-Key",),
    response_headers=("ETag", "Location", "Idempotent-Replayed"),
)
async def upload_timesheets(request: Request, principal: Principal) -> Response:
    """Upload one entry (answered with one) or an array (answered with an array); all or nothing;
    an external_ref already uploaded by this client answers (or updates) its stored entry."""
    payload = await _payload(request)
    items = payload if isinstance(payload, list) else [payload]
    if not items:
        raise ValidationFailed.field("body", "the array holds no entries")
    if len(items) > MAX_UPLOAD_ENTRIES:
        raise PayloadTooLarge(f"at most {MAX_UPLOAD_ENTRIES} entries per upload")

    async def run(before_commit: service.BeforeCommit | None) -> list[service.EntryDocument]:
        prefix = "[{}]" if isinstance(payload, list) else ""
        uploads_ = [
            validate(
                EntryUpload,
                _writable(item, keep=("user_id", "external_ref")),
                prefix=prefix.format(index),
            )
            for index, item in enumerate(items)
        ]
        return await uploads.upload_entries(
            request.app.state.db,
            entries=[_new_entry(item, item.user_id, item.external_ref) for item in uploads_],
            actor=actor(principal),
            before_commit=before_commit,
        )

    def respond(entries: list[service.EntryDocument]) -> Response:
        if isinstance(payload, list):
            bodies = [entry.json.encode() for entry in entries]
            return documents_response(bodies, status_code=201)
        return _created(entries)

    return await respond_once(request, principal, payload, run, respond)


OPERATIONS = (
    upload_timesheets,
    create_timesheet,
    list_timesheets,
    get_timesheet,
    update_timesheet,
    delete_timesheet,
    get_timesheet_history,
)
