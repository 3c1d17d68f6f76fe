"""Reports on the caller's own entries, and who the caller is."""

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from .. import reports
from ..api import operation, query_date
from ..auth import Principal
from ..errors import ValidationFailed
from ..http import JSONResponse
from ..schemas import Me, Summary

_RANGE: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("from", "first date, YYYY-MM-DD", {"type": "string", "format": "date"}),
    ("to", "last date, YYYY-MM-DD", {"type": "string", "format": "date"}),
)
_GROUPS = ("day", "week", "project")


@operation(
    "GET",
    "/timesheets/summary",
    scope="read:timesheets",
    response=Summary,
    errors=(422,),
    query=(
        *_RANGE,
        (
            "group_by",
            "day (the default), week (ISO weeks) or project",
            {"type": "string", "enum": list(_GROUPS)},
        ),
    ),
)
async def summarize_timesheets(request: Request, principal: Principal) -> Response:
    """Total the caller's own hours and entries, by day, week or project."""
    group_by = request.query_params.get("group_by", "day")
    if group_by not in _GROUPS:
        raise ValidationFailed.field("group_by", "group_by must be day, week or project")
    summary = await reports.summarize(
        request.app.state.db,
        user_id=principal.user_id,
        group_by=group_by,  # type: ignore[arg-type]  # checked against _GROUPS above
        date_from=query_date(request, "from"),
        date_to=query_date(request, "to"),
    )
    return JSONResponse(summary)


@operation(
    "GET",
    "/timesheets/export.csv",
    scope="read:timesheets",
    errors=(422,),
    query=_RANGE,
    media_type="text/csv",
)
async def export_timesheets(request: Request, principal: Principal) -> Response:
    """Export the caller's own entries as CSV, oldest first; formula-like cells are neutralised."""
    text = await reports.export_csv(
        request.app.state.db,
        user_id=principal.user_id,
        date_from=query_date(request, "from"),
        date_to=query_date(request, "to"),
    )
    return Response(
        text.encode(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="timesheets.csv"'},
    )


@operation("GET", "/me", scope=None, response=Me)
async def get_me(request: Request, principal: Principal) -> Response:
    """Show the caller's user id, subject, client and effective scopes (any valid token)."""
    return JSONResponse(
        {
            "user_id": principal.user_id,
            "subject": principal.subject,
            "client_id": principal.client_id,
            "scopes": sorted(principal.scopes),
        }
    )


OPERATIONS = (summarize_timesheets, export_timesheets, get_me)
