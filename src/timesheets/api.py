"""How routes are declared: one decorator gives a handler its method, path, scope and documented
shapes; the same declarations build the Starlette routes and the OpenAPI document."""

import datetime as dt
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .auth import InsufficientScope, Principal, TokenVerifier, bearer_token
from .errors import NotFound, ValidationFailed

Handler = Callable[[Request, Principal], Awaitable[Response]]
# Only YYYY-MM-DD: date.fromisoformat also reads week dates (2017-W28-1) and other scripts' digits.
_QUERY_DATE = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    handler: Handler
    scope: str
    status: int = 200
    body: tuple[type[BaseModel], ...] = ()
    response: type[BaseModel] | None = None
    response_is_list: bool = False
    errors: tuple[int, ...] = ()
    query: tuple[tuple[str, str, dict[str, Any]], ...] = ()  # (name, description, schema)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.handler.__name__

    @property
    def summary(self) -> str:
        return (self.handler.__doc__ or "").strip().splitlines()[0]

    def route(self) -> Route:
        async def endpoint(request: Request) -> Response:
            principal = await authenticate(request, self.scope)
            return await self.handler(request, principal)

        endpoint.__name__ = self.name
        return Route(self.path, endpoint, methods=[self.method])


def operation(
    method: str, path: str, *, scope: str, **options: Any
) -> Callable[[Handler], Operation]:
    def declare(handler: Handler) -> Operation:
        return Operation(method, path, handler, scope, **options)

    return declare


async def authenticate(request: Request, scope: str) -> Principal:
    """The verified caller, who must hold `scope`.

    Raises:
        MissingToken, InvalidToken, KeySourceUnavailable, InsufficientScope.
    """
    verifier: TokenVerifier = request.app.state.verifier
    principal = await verifier.verify(bearer_token(request.headers.get("authorization")))
    if not principal.has_scope(scope):
        raise InsufficientScope(scope)
    return principal


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
