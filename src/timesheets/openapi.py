"""The OpenAPI 3.1 document, built from the route declarations and the pydantic models."""

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from . import __version__
from .api import Operation
from .schemas import EntryPublic, ErrorBody

_STATUS_TEXT = {
    200: "OK",
    201: "Created",
    204: "No content",
    401: "Missing or invalid token",
    403: "Forbidden: a scope is missing, or the action is not allowed to the caller",
    404: "Not found (someone else's entries are not found either)",
    409: "State conflict",
    413: "Body too large",
    415: "Unsupported media type",
    422: "Invalid input, with the fields",
    503: "Key server or database unavailable; see Retry-After",
}
_BODY_TYPES = ("application/json", "application/x-www-form-urlencoded")


def build_openapi(operations: tuple[Operation, ...]) -> dict[str, Any]:
    models: list[type[BaseModel]] = [EntryPublic, ErrorBody]
    for op in operations:
        models.extend(model for model in op.body if model not in models)
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
    document: dict[str, Any] = {
        "operationId": op.name,
        "summary": op.summary,
        "description": f"Requires the scope `{op.scope}`.",
        "security": [{"bearerAuth": [op.scope]}],
        "x-required-scopes": [op.scope],
        "responses": _responses(op),
    }
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "query", "required": False, "description": text, "schema": schema}
        for name, text, schema in op.query
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


def _responses(op: Operation) -> dict[str, Any]:
    success: dict[str, Any] = {"description": _STATUS_TEXT[op.status]}
    if op.response is not None:
        schema: dict[str, Any] = _ref(op.response)
        if op.response_is_list:
            schema = {"type": "array", "items": schema}
        success["content"] = {"application/json": {"schema": schema}}
    responses = {str(op.status): success}
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
