"""/approvals: managers decide on other users' pending entries."""

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from .. import service
from ..api import if_match, operation, path_id
from ..auth import Principal
from ..http import read_payload
from ..schemas import Approval, EntryPublic, Rejection, Reopening, validate
from .paging import PAGING_QUERY, page_of, paged_response
from .timesheets import actor, entry_response

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
    errors=(403, 404, 409, 412, 415, 422),
    request_headers=("If-Match",),
    response_headers=("ETag",),
)
async def approve_entry(request: Request, principal: Principal) -> Response:
    """Approve an entry (again: no change); not one's own, not a rejected one."""
    entry_id = path_id(request)
    payload = await read_payload(request, _MAX_DECISION_BYTES)
    if payload is not None:
        validate(Approval, payload)
    entry = await service.approve_entry(
        request.app.state.db,
        entry_id=entry_id,
        actor=actor(principal),
        expect=if_match(request, entry_id),
    )
    return entry_response(entry)


@operation(
    "POST",
    "/approvals/{entry_id}/reject",
    scope="approve:timesheets",
    body=(Rejection,),
    response=EntryPublic,
    errors=(403, 404, 409, 412, 415, 422),
    request_headers=("If-Match",),
    response_headers=("ETag",),
)
async def reject_entry(request: Request, principal: Principal) -> Response:
    """Reject a pending entry with a reason; its owner may then edit it."""
    return await _decide_with_reason(request, principal, Rejection, service.reject_entry)


@operation(
    "POST",
    "/approvals/{entry_id}/reopen",
    scope="approve:timesheets",
    body=(Reopening,),
    response=EntryPublic,
    errors=(403, 404, 409, 412, 415, 422),
    request_headers=("If-Match",),
    response_headers=("ETag",),
)
async def reopen_entry(request: Request, principal: Principal) -> Response:
    """Return an approved or rejected entry to pending, with a reason; not one's own."""
    return await _decide_with_reason(request, principal, Reopening, service.reopen_entry)


async def _decide_with_reason(
    request: Request,
    principal: Principal,
    body: type[Rejection] | type[Reopening],
    decide: Callable[..., Awaitable[service.EntryDocument]],
) -> Response:
    entry_id = path_id(request)
    data = validate(body, await read_payload(request, _MAX_DECISION_BYTES))
    entry = await decide(
        request.app.state.db,
        entry_id=entry_id,
        actor=actor(principal),
        reason=data.reason,
        expect=if_match(request, entry_id),
    )
    return entry_response(entry)


OPERATIONS = (list_approvals, approve_entry, reject_entry, reopen_entry)
