"""Paging shared by the list endpoints: bare JSON arrays, the next page in a `Link` header."""

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ..api import query_int
from ..documents import DocumentList, Page, decode_cursor, encode_cursor
from ..http import documents_response

PAGING_QUERY: tuple[tuple[str, str, dict[str, Any]], ...] = (
    (
        "limit",
        "page size; without it, up to the server's cap (1000)",
        {"type": "integer", "minimum": 1},
    ),
    ("cursor", "opaque position, from the previous page's Link header", {"type": "string"}),
)


def page_of(request: Request, *, timestamps: bool = False) -> Page:
    cap: int = request.app.state.settings.max_page_size
    limit = query_int(request, "limit", low=1, high=cap) or cap
    cursor = request.query_params.get("cursor")
    after = decode_cursor(cursor, timestamps=timestamps) if cursor else None
    return Page(limit=limit, after=after)


def paged_response(request: Request, entries: DocumentList, page: Page) -> Response:
    """The page as a bare array; RFC 8288 `Link: <...>; rel="next"` when more entries follow."""
    bodies = entries.bodies(page.limit)
    if len(entries) <= page.limit:
        return documents_response(bodies)
    cursor = encode_cursor(entries.position(page.limit - 1))
    next_url = request.url.include_query_params(cursor=cursor)
    return documents_response(bodies, headers={"Link": f'<{next_url}>; rel="next"'})
