"""How routes are declared: one decorator gives a handler its method, path, scope and documented
shapes; the same declarations build the Starlette routes and the OpenAPI document."""

import datetime as dt
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from .auth import InsufficientScope, Principal, TokenVerifier, bearer_token
from .errors import InvalidIdempotencyKey, NotFound, ValidationFailed
from .ratelimit import RateLimiter

Handler = Callable[[Request, Principal], Awaitable[Response]]
# Only YYYY-MM-DD: date.fromisoformat also reads week dates (2017-W28-1) and other scripts' digits.
_QUERY_DATE = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)
_ENTITY_TAG = re.compile(r'(W/)?"(\d{1,18})-(\d{1,18})"', re.ASCII)
# RFC 3339 date-time: a time zone is required, so that the instant is unambiguous.
_TIMESTAMP = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})", re.ASCII
)


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    handler: Handler
    scope: str | None  # None: any valid token will do
    status: int = 200
    body: tuple[type[BaseModel], ...] = ()
    response: type[BaseModel] | None = None
    response_is_list: bool = False
    errors: tuple[int, ...] = ()
    query: tuple[tuple[str, str, dict[str, Any]], ...] = ()  # (name, description, schema)
    extra: dict[str, Any] = field(default_factory=dict)
    also: tuple[str, ...] = ()  # scopes that grant access as well as `scope`
    request_headers: tuple[str, ...] = ()  # documented request headers, see openapi.HEADERS
    response_headers: tuple[str, ...] = ()
    media_type: str = "application/json"

    @property
    def name(self) -> str:
        return self.handler.__name__

    @property
    def summary(self) -> str:
        return (self.handler.__doc__ or "").strip().splitlines()[0]

    def route(self) -> Route:
        return Route(self.path, _Endpoint(self), methods=[self.method], name=self.name)


class _QueryParams(QueryParams):
    """Starlette's QueryParams, whose `get` of a missing name returns the default without raising
    and catching a KeyError (Mapping.get's way): a list request asks for six names it rarely has."""

    def get(self, key: Any, default: Any = None) -> Any:
        return self._dict.get(key, default)


_NO_QUERY = _QueryParams()


class _Request(Request):
    """Starlette's Request, with `_QueryParams`; requests without a query string (most) share one
    empty, immutable instance instead of parsing an empty string."""

    @property
    def query_params(self) -> QueryParams:
        if not self.scope["query_string"]:
            return _NO_QUERY
        if not hasattr(self, "_query_params"):
            self._query_params = _QueryParams(self.scope["query_string"])
        return self._query_params


class _Endpoint:
    """An operation as a plain ASGI app. Starlette would wrap a function endpoint in one more
    layer that catches errors; the application's error layer (app._AnswerErrors) renders them."""

    def __init__(self, operation: Operation) -> None:
        self.operation = operation

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        operation = self.operation
        request = _Request(scope, receive, send)
        principal = await authenticate(request, operation.scope, *operation.also)
        response = await operation.handler(request, principal)
        await response(scope, receive, send)


def operation(
    method: str, path: str, *, scope: str | None, **options: Any
) -> Callable[[Handler], Operation]:
    def declare(handler: Handler) -> Operation:
        return Operation(method, path, handler, scope, **options)

    return declare


async def authenticate(request: Request, scope: str | None, *also: str) -> Principal:
    """The verified caller, who must hold `scope` or one of `also` (with None: any valid token).

    Raises:
        MissingToken, InvalidToken, KeySourceUnavailable, InsufficientScope.
    """
    verifier: TokenVerifier = request.app.state.verifier
    principal = await verifier.verify(bearer_token(_authorization(request.scope["headers"])))
    request.scope.setdefault("state", {})["principal"] = principal  # for the request log
    limiter: RateLimiter | None = request.app.state.rate_limiter
    if limiter is not None:
        limiter.check(principal.subject)
    if scope is not None and not any(principal.has_scope(name) for name in (scope, *also)):
        raise InsufficientScope(scope)
    return principal


def _authorization(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The first Authorization header's value (as `request.headers.get` would give it, without
    building the Headers object)."""
    for name, value in headers:
        if name == b"authorization":
            return value.decode("latin-1")
    return None


def path_id(request: Request) -> int:
    """The `{entry_id}` of the path; ids out of range are simply not found."""
    text = request.path_params["entry_id"]
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise NotFound(f"no entry {text}")
    return int(text)


def query_date(request: Request, name: str) -> dt.date | None:
    value = request.query_params.get(name)
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value) if _QUERY_DATE.fullmatch(value) else _bad_date(name)
    except ValueError:
        return _bad_date(name)


def _bad_date(name: str) -> dt.date:
    raise ValidationFailed.field(name, f"{name} must be a date such as 2017-07-10")


def query_int(request: Request, name: str, *, low: int, high: int) -> int | None:
    value = request.query_params.get(name)
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()) or not low <= int(value) <= high:
        raise ValidationFailed.field(name, f"{name} must be a whole number from {low} to {high}")
    return int(value)


def query_timestamp(request: Request, name: str) -> dt.datetime | None:
    """An RFC 3339 date-time (with a zone) from the query, in UTC; digits past microseconds are
    dropped (so the instant is never later than the one given)."""
    value = request.query_params.get(name)
    if value is None:
        return None
    match = _TIMESTAMP.fullmatch(value)
    if match:
        fraction = (match.group(1) or "")[:7]
        zone = "+00:00" if match.group(2) in "Zz" else match.group(2)
        try:
            return dt.datetime.fromisoformat(
                f"{value[:10]}T{value[11:19]}{fraction}{zone}"
            ).astimezone(dt.UTC)
        except (ValueError, OverflowError):
            pass
    raise ValidationFailed.field(name, f"{name} must be an RFC 3339 date-time with a time zone")


def etag(entry_id: int, version: int) -> str:
    """The entry's strong entity tag (RFC 9110 8.8.3): its id and version."""
    return f'"{entry_id}-{version}"'


def _entity_tags(request: Request, header: str) -> list[str] | None:
    values = request.headers.getlist(header)
    if not values:
        return None
    return [tag.strip() for value in values for tag in value.split(",") if tag.strip()]


def if_match(request: Request, entry_id: int) -> frozenset[int] | None:
    """The versions of the entry that `If-Match` accepts, or None without one (or with `*`).

    Strong comparison (RFC 9110 13.1.1): weak tags and others' tags match nothing, so a list
    without this entry's current tag fails the precondition.
    """
    tags = _entity_tags(request, "if-match")
    if tags is None or "*" in tags:
        return None
    versions = set()
    for tag in tags:
        match = _ENTITY_TAG.fullmatch(tag)
        if match and not match.group(1) and int(match.group(2)) == entry_id:
            versions.add(int(match.group(3)))
    return frozenset(versions)


def none_match(request: Request, current: str) -> bool:
    """Whether `If-None-Match` names the `current` tag, or `*` (weak comparison, RFC 9110
    13.1.2): then GET answers 304."""
    tags = _entity_tags(request, "if-none-match")
    if tags is None:
        return False
    return "*" in tags or any(tag.removeprefix("W/") == current for tag in tags)


def idempotency_key(request: Request) -> str | None:
    """The `Idempotency-Key`, if any: 1 to 255 printable ASCII characters, bare or as the
    draft's quoted structured-field string.

    Raises:
        InvalidIdempotencyKey: given twice, empty, too long, or other characters.
    """
    values = request.headers.getlist("idempotency-key")
    if not values:
        return None
    if len(values) > 1:
        raise InvalidIdempotencyKey("give Idempotency-Key once")
    value = values[0]
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    if not 1 <= len(value) <= 255 or not all(" " <= char <= "~" for char in value):
        raise InvalidIdempotencyKey()
    return value
