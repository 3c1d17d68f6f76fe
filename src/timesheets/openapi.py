"""The OpenAPI 3.1 document, built from the route declarations and the pydantic models."""

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from . import __version__
from .api import Operation
from .schemas import EntryPublic, ErrorBody, Tombstone

_STATUS_TEXT = {
    200: "OK",
    201: "Created",
    204: "No content",
    304: "Not modified: If-None-Match names the entry's current ETag",
    400: "Malformed body, or an Idempotency-Key that is not 1-255 printable ASCII characters",
    401: "Missing or invalid token",
    403: "Forbidden: a scope is missing, or the action is not allowed to the caller",
    404: "Not found (someone else's entries are not found either)",
    409: "State conflict; or the first request with this Idempotency-Key is still in flight",
    412: "Precondition failed: If-Match does not name the entry's current ETag",
    413: "Body too large",
    415: "Unsupported media type",
    422: "Invalid input, with the fields; or an Idempotency-Key reused with another body",
    503: "Key server or database unavailable; see Retry-After",
}
_BODY_TYPES = ("application/json", "application/x-www-form-urlencoded")
HEADERS: dict[str, tuple[str, dict[str, Any]]] = {
    "Idempotency-Key": (
        "a unique key (1-255 printable ASCII characters) per intended request: a retry with "
        "the same key and body replays the first answer; kept 24 hours, per caller",
        {"type": "string", "minLength": 1, "maxLength": 255},
    ),
    "If-Match": (
        "the entry's ETag as last read: 412 when the entry has changed since",
        {"type": "string"},
    ),
    "If-None-Match": ("an ETag: 304 when it is still the entry's current one", {"type": "string"}),
    "ETag": ('the entry\'s strong entity tag, "<id>-<version>"', {"type": "string"}),
    "Location": ("where the created entry lives", {"type": "string"}),
    "Link": ('RFC 8288 `<...>; rel="next"` when more entries follow', {"type": "string"}),
    "Idempotent-Replayed": (
        "`true` when this is the stored answer to an earlier request with the same key",
        {"type": "string", "enum": ["true"]},
    ),
    "X-Sync-Timestamp": (
        "with updated_since: the server time to pass as updated_since next (take the last page's)",
        {"type": "string", "format": "date-time"},
    ),
}


def build_openapi(operations: tuple[Operation, ...]) -> dict[str, Any]:
    models: list[type[BaseModel]] = [EntryPublic, ErrorBody, Tombstone]
    for op in operations:
        found = (*op.body, *((op.response,) if op.response else ()))
        models.extend(model for model in found if model not in models)
    _, schemas = models_json_schema(
        [(model, "validation") for model in models], ref_template="#/components/schemas/{model}"
    )
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op)
    paths.update(_health_paths())
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Timesheets API",
            "version": __version__,
            "description": "Record, list and approve working hours. Every call needs an OAuth2 "
            "access token (a JWT) sent as `Authorization: Bearer`, holding the scope shown.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _operation(op: Operation) -> dict[str, Any]:
    scopes = [op.scope, *op.also] if op.scope else []
    document: dict[str, Any] = {
        "operationId": op.name,
        "summary": op.summary,
        "description": _requirement(op),
        "security": [{"bearerAuth": [scope]} for scope in scopes] or [{"bearerAuth": []}],
        "x-required-scopes": scopes,
        "responses": _responses(op),
    }
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "query", "required": False, "description": text, "schema": schema}
        for name, text, schema in op.query
    ]
    parameters += [
        {"name": name, "in": "header", "required": False, "description": text, "schema": schema}
        for name, (text, schema) in ((name, HEADERS[name]) for name in op.request_headers)
    ]
    if "{entry_id}" in op.path:
        parameters.append(
            {"name": "entry_id", "in": "path", "required": True, "schema": {"type": "integer"}}
        )
    if parameters:
        document["parameters"] = parameters
    if op.body:
        schema: dict[str, Any] = _ref(op.body[0])
        if op.extra.get("x-accepts-array"):
            schema = {"oneOf": [schema, {"type": "array", "items": schema}]}
        document["requestBody"] = {
            "required": op.method != "PUT",
            "content": {media: {"schema": schema} for media in _BODY_TYPES},
        }
    return document


def _requirement(op: Operation) -> str:
    if op.scope is None:
        return "Requires a valid access token, with any scopes."
    if op.also:
        alternatives = " or ".join(f"`{scope}`" for scope in (op.scope, *op.also))
        return f"Requires the scope {alternatives}."
    return f"Requires the scope `{op.scope}`."


def _responses(op: Operation) -> dict[str, Any]:
    success: dict[str, Any] = {"description": _STATUS_TEXT[op.status]}
    if op.response is not None:
        schema: dict[str, Any] = _ref(op.response)
        if op.response_is_list:
            schema = {"type": "array", "items": schema}
        if op.response is EntryPublic and "X-Sync-Timestamp" in op.response_headers:
            schema = {"type": "array", "items": {"oneOf": [_ref(EntryPublic), _ref(Tombstone)]}}
        success["content"] = {op.media_type: {"schema": schema}}
    elif op.media_type != "application/json":
        success["content"] = {op.media_type: {"schema": {"type": "string"}}}
    if op.response_headers:
        success["headers"] = {
            name: {"description": HEADERS[name][0], "schema": HEADERS[name][1]}
            for name in op.response_headers
        }
    responses = {str(op.status): success}
    if op.extra.get("x-not-modified"):
        responses["304"] = {"description": _STATUS_TEXT[304]}
    for status in sorted({401, 403, 503, *op.errors}):
        responses[str(status)] = {
            "description": _STATUS_TEXT[status],
            "content": {"application/json": {"schema": _ref(ErrorBody)}},
        }
    return responses


def _health_paths() -> dict[str, Any]:
    plain = {"200": {"description": "OK"}}
    return {
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "Liveness.",
                "security": [],
                "responses": plain,
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "security": [],
                "summary": "Readiness: the database and each issuer's key source.",
                "responses": {**plain, "503": {"description": "Not ready"}},
            }
        },
    }
