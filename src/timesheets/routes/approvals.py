"""/approvals: managers decide on other users' pending entries."""

from starlette.requests import Request
from starlette.responses import Response

from .. import service
from ..api import operation, path_id
from ..auth import Principal
from ..http import document_response, read_payload
from ..schemas import Approval, EntryPublic, Rejection, validate
from .paging import PAGING_QUERY, page_of, paged_response

_MAX_DECISION_BYTES = 16 * 1024


@operation(
    "GET",
    "/approvals",
    scope="approve:timesheets",
    response=EntryPublic,
    response_is_list=True,
    errors=(422,),
    query=PAGING_QUERY,
)
async def list_approvals(request: Request, principal: Principal) -> Response:
    """List the pending entries of all users, uploaded ones too, oldest first."""
    page = page_of(request)
    where = service.EntryFilter(status=service.EntryStatus.PENDING)
    entries = await service.list_entries(request.app.state.db, where=where, page=page)
    return paged_response(request, entries, page)


@operation(
    "PUT",
    "/approvals/{entry_id}",
    scope="approve:timesheets",
    body=(Approval,),
    response=EntryPublic,
    errors=(403, 404, 409, 415, 422),
)
async def approve_entry(request: Request, principal: Principal) -> Response:
    """Approve an entry (again: no change); not one's own, not a rejected one."""
    entry_id = path_id(request)
    payload = await read_payload(request, _MAX_DECISION_BYTES)
    if payload is not None:
        validate(Approval, payload)
    entry = await service.approve_entry(
        request.app.state.db, entry_id=entry_id, approver=principal.user_id
    )
    return document_response(entry.json)


@operation(
    "POST",
    "/approvals/{entry_id}/reject",
    scope="approve:timesheets",
    body=(Rejection,),
    response=EntryPublic,
    errors=(403, 404, 409, 415, 422),
)
async def reject_entry(request: Request, principal: Principal) -> Response:
    """Reject a pending entry with a reason; its owner may then edit it."""
    entry_id = path_id(request)
    data = validate(Rejection, await read_payload(request, _MAX_DECISION_BYTES))
    entry = await service.reject_entry(
        request.app.state.db, entry_id=entry_id, approver=principal.user_id, reason=data.reason
    )
    return document_response(entry.json)


OPERATIONS = (list_approvals, approve_entry, reject_entry)
