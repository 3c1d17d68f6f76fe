"""/timesheets: the caller's own entries, and the batch upload."""

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from .. import service
from ..api import operation, path_id, query_date
from ..auth import Principal
from ..errors import PayloadTooLarge, ValidationFailed
from ..http import document_response, documents_response, read_payload
from ..schemas import READ_ONLY_FIELDS, EntryCreate, EntryPublic, EntryUpdate, EntryUpload, validate
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
)


def _new_entry(data: EntryCreate, user_id: str) -> service.NewEntry:
    return service.NewEntry(user_id, data.date, data.project, data.hours, data.notes or "")


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


def _created(entry: service.EntryDocument) -> Response:
    return document_response(
        entry.json, status_code=201, headers={"Location": f"/timesheets/{entry.id}"}
    )


@operation(
    "POST",
    "/timesheets",
    scope="create:timesheets",
    status=201,
    body=(EntryCreate,),
    response=EntryPublic,
    errors=(409, 413, 415, 422),
)
async def create_timesheet(request: Request, principal: Principal) -> Response:
    """Record an entry for the caller."""
    data = validate(EntryCreate, _writable(await _payload(request)))
    created = await service.create_entries(
        request.app.state.db, entries=[_new_entry(data, principal.user_id)], actor=principal.subject
    )
    return _created(created[0])


@operation(
    "GET",
    "/timesheets",
    scope="read:timesheets",
    response=EntryPublic,
    response_is_list=True,
    errors=(422,),
    query=(*_FILTERS, *PAGING_QUERY),
)
async def list_timesheets(request: Request, principal: Principal) -> Response:
    """List the caller's own entries, oldest first."""
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


@operation(
    "GET", "/timesheets/{entry_id}", scope="read:timesheets", response=EntryPublic, errors=(404,)
)
async def get_timesheet(request: Request, principal: Principal) -> Response:
    """Show one of the caller's own entries."""
    entry = await service.get_document(
        request.app.state.db, entry_id=path_id(request), user_id=principal.user_id
    )
    return document_response(entry.json)


@operation(
    "PATCH",
    "/timesheets/{entry_id}",
    scope="create:timesheets",
    body=(EntryUpdate,),
    response=EntryPublic,
    errors=(404, 409, 413, 415, 422),
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
        request.app.state.db, entry_id=entry_id, user_id=principal.user_id, changes=changes
    )
    return document_response(updated.json)


@operation(
    "DELETE", "/timesheets/{entry_id}", scope="delete:timesheets", status=204, errors=(404, 409)
)
async def delete_timesheet(request: Request, principal: Principal) -> Response:
    """Delete an own pending or rejected entry."""
    await service.delete_entry(
        request.app.state.db, entry_id=path_id(request), user_id=principal.user_id
    )
    return Response(status_code=204)


@operation(
    "POST",
    "/timesheets/upload",
    scope="batch:upload",
    status=201,
    body=(EntryUpload,),
    response=EntryPublic,
    errors=(413, 415, 422),
    extra={"x-accepts-array": True},
)
async def upload_timesheets(request: Request, principal: Principal) -> Response:
    """Upload one entry (answered with one) or an array (answered with an array); all or nothing."""
    payload = await _payload(request)
    items = payload if isinstance(payload, list) else [payload]
    if not items:
        raise ValidationFailed.field("body", "the array holds no entries")
    if len(items) > MAX_UPLOAD_ENTRIES:
        raise PayloadTooLarge(f"at most {MAX_UPLOAD_ENTRIES} entries per upload")
    prefix = "[{}]" if isinstance(payload, list) else ""
    uploads = [
        validate(EntryUpload, _writable(item, keep=("user_id",)), prefix=prefix.format(index))
        for index, item in enumerate(items)
    ]
    created = await service.create_entries(
        request.app.state.db,
        entries=[_new_entry(upload, upload.user_id) for upload in uploads],
        actor=principal.client_id or principal.subject,
    )
    if isinstance(payload, list):
        return documents_response([entry.json for entry in created], status_code=201)
    return _created(created[0])


OPERATIONS = (
    upload_timesheets,
    create_timesheet,
    list_timesheets,
    get_timesheet,
    update_timesheet,
    delete_timesheet,
)
