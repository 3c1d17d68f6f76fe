"""The OpenAPI document served at /openapi.json, and the /docs page that renders it."""

import shutil
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate

# The contract's endpoints (path templates as the document writes them) and the scope of each.
CONTRACT = {
    ("post", "/timesheets"): "create:timesheets",
    ("get", "/timesheets"): "read:timesheets",
    ("get", "/timesheets/{entry_id}"): "read:timesheets",
    ("patch", "/timesheets/{entry_id}"): "create:timesheets",
    ("delete", "/timesheets/{entry_id}"): "delete:timesheets",
    ("post", "/timesheets/upload"): "batch:upload",
    ("get", "/approvals"): "approve:timesheets",
    ("put", "/approvals/{entry_id}"): "approve:timesheets",
    ("post", "/approvals/{entry_id}/reject"): "approve:timesheets",
    ("post", "/approvals/{entry_id}/reopen"): "approve:timesheets",
    ("get", "/timesheets/summary"): "read:timesheets",
    ("get", "/timesheets/export.csv"): "read:timesheets",
}
# Routes that need a token but not one particular scope: (method, path) -> any of these scopes.
ANY_OF = {
    ("get", "/timesheets/{entry_id}/history"): ["read:timesheets", "approve:timesheets"],
    ("get", "/me"): [],
}
PUBLIC = {("get", "/healthz"), ("get", "/readyz")}
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
ERROR_REF = "#/components/schemas/ErrorBody"
ENTRY_REF = "#/components/schemas/EntryPublic"


@pytest.fixture
def database_url(tmp_path: Path, sqlite_template: Path) -> str:
    """SQLite only: the document is built from the route declarations, never from the database
    (this overrides conftest's fixture, which would run every test here on each engine)."""
    path = tmp_path / "timesheets.db"
    shutil.copy(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def document(client) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    return body


def operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method, path): operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    }


def refs(node: Any) -> list[str]:
    """Every $ref anywhere in `node`."""
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in refs(value)]
    return []


def resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), f"{ref} is not a local reference"
    node: Any = document
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"{ref} does not resolve"
        node = node[part]
    return node


def test_get_openapi_json_is_a_valid_openapi_3_1_document(document):
    assert document["openapi"].startswith("3.1.")
    assert document["info"]["title"]
    assert document["info"]["version"]

    validate(document)  # raises on any violation of the OpenAPI 3.1 schema


def test_get_openapi_json_declares_bearer_jwt_security_scheme(document):
    schemes = document["components"]["securitySchemes"]

    assert schemes == {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}


def test_get_openapi_json_lists_every_contract_endpoint_with_its_method(document):
    documented = set(operations(document))

    assert set(CONTRACT) | set(ANY_OF) | PUBLIC <= documented
    assert documented - set(CONTRACT) - set(ANY_OF) - PUBLIC == set()


@pytest.mark.parametrize(("method", "path"), sorted(ANY_OF))
def test_get_openapi_json_gives_alternative_scopes_or_none(document, method, path):
    operation = operations(document)[(method, path)]
    scopes = ANY_OF[(method, path)]

    assert operation["x-required-scopes"] == scopes
    assert operation["security"] == [{"bearerAuth": [scope]} for scope in scopes] or [
        {"bearerAuth": []}
    ]
    assert "401" in operation["responses"]


def test_get_openapi_json_documents_conditional_and_idempotency_headers(document):
    def headers(method: str, path: str) -> set[str]:
        operation = operations(document)[(method, path)]
        return {p["name"] for p in operation.get("parameters", []) if p["in"] == "header"}

    assert headers("post", "/timesheets") == {"Idempotency-Key"}
    assert headers("post", "/timesheets/upload") == {"Idempotency-Key"}
    assert headers("get", "/timesheets/{entry_id}") == {"If-None-Match"}
    for key in [
        ("patch", "/timesheets/{entry_id}"),
        ("delete", "/timesheets/{entry_id}"),
        ("put", "/approvals/{entry_id}"),
        ("post", "/approvals/{entry_id}/reject"),
        ("post", "/approvals/{entry_id}/reopen"),
    ]:
        assert headers(*key) == {"If-Match"}, key
        assert "412" in operations(document)[key]["responses"], key
    get = operations(document)[("get", "/timesheets/{entry_id}")]
    assert "304" in get["responses"]
    assert "ETag" in get["responses"]["200"]["headers"]
    create = operations(document)[("post", "/timesheets")]["responses"]
    assert {"409", "422", "400"} <= set(create)
    assert "Idempotent-Replayed" in create["201"]["headers"]
    listing = operations(document)[("get", "/timesheets")]["responses"]["200"]
    assert "X-Sync-Timestamp" in listing["headers"]
    csv = operations(document)[("get", "/timesheets/export.csv")]["responses"]["200"]
    assert set(csv["content"]) == {"text/csv"}


@pytest.mark.parametrize(("method", "path"), sorted(CONTRACT))
def test_get_openapi_json_gives_each_operation_its_required_scope(document, method, path):
    operation = operations(document)[(method, path)]
    scope = CONTRACT[(method, path)]

    assert operation["security"] == [{"bearerAuth": [scope]}]
    assert operation["x-required-scopes"] == [scope]
    assert scope in operation["description"]
    assert operation["operationId"]
    for status in ("401", "403"):
        content = operation["responses"][status]["content"]["application/json"]
        assert content["schema"] == {"$ref": ERROR_REF}


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_get_openapi_json_marks_health_endpoints_as_needing_no_token(document, path):
    assert document["paths"][path]["get"]["security"] == []


def test_get_openapi_json_operation_ids_are_unique(document):
    ids = [operation["operationId"] for operation in operations(document).values()]

    assert len(ids) == len(set(ids))


def test_get_openapi_json_documents_create_with_201_and_error_responses(document):
    create = document["paths"]["/timesheets"]["post"]
    responses = create["responses"]

    assert responses["201"]["content"]["application/json"]["schema"] == {"$ref": ENTRY_REF}
    for status in ("401", "403", "422"):
        assert status in responses, status
        assert responses[status]["content"]["application/json"]["schema"] == {"$ref": ERROR_REF}
    body = create["requestBody"]
    assert body["required"] is True
    assert set(body["content"]) == {"application/json", "application/x-www-form-urlencoded"}
    for media in body["content"].values():
        assert media["schema"] == {"$ref": "#/components/schemas/EntryCreate"}


def test_get_openapi_json_documents_list_as_array_of_entry_public(document):
    listing = document["paths"]["/timesheets"]["get"]

    schema = listing["responses"]["200"]["content"]["application/json"]["schema"]
    # Sync (updated_since) shows deleted entries as tombstones.
    tombstone = {"$ref": "#/components/schemas/Tombstone"}
    assert schema == {"type": "array", "items": {"oneOf": [{"$ref": ENTRY_REF}, tombstone]}}
    parameters = {p["name"]: p for p in listing["parameters"]}
    assert {"from", "to", "project", "status", "limit", "cursor", "updated_since"} <= set(
        parameters
    )
    assert all(p["in"] == "query" and p["required"] is False for p in parameters.values())


def test_get_openapi_json_entry_public_schema_has_every_entry_field(document):
    schema = resolve(document, ENTRY_REF)

    assert set(schema["properties"]) == {
        "id",
        "user_id",
        "date",
        "project",
        "hours",
        "notes",
        "status",
        "approved",
        "rejection_reason",
        "created_at",
        "updated_at",
        "version",
        "external_ref",
    }
    assert schema["properties"]["id"]["type"] == "integer"
    assert schema["properties"]["hours"]["type"] == "number"
    assert schema["properties"]["approved"]["type"] == "boolean"
    assert set(schema["properties"]["status"]["enum"]) == {"pending", "approved", "rejected"}


def test_get_openapi_json_error_schema_requires_error_and_message(document):
    schema = resolve(document, ERROR_REF)

    assert {"error", "message"} <= set(schema["required"])


def test_get_openapi_json_upload_accepts_one_entry_or_an_array(document):
    body = document["paths"]["/timesheets/upload"]["post"]["requestBody"]
    schema = body["content"]["application/json"]["schema"]
    upload = {"$ref": "#/components/schemas/EntryUpload"}

    assert schema == {"oneOf": [upload, {"type": "array", "items": upload}]}
    assert "user_id" in resolve(document, upload["$ref"])["required"]


@pytest.mark.parametrize(
    ("method", "path"), sorted(key for key in CONTRACT if "{entry_id}" in key[1])
)
def test_get_openapi_json_declares_entry_id_path_parameter(document, method, path):
    parameters = operations(document)[(method, path)]["parameters"]

    assert {
        "name": "entry_id",
        "in": "path",
        "required": True,
        "schema": {"type": "integer"},
    } in parameters


def test_get_openapi_json_every_ref_resolves(document):
    found = refs(document)

    assert found, "the document uses no $ref at all"
    for ref in found:
        resolve(document, ref)


def test_get_docs_answers_html_that_loads_the_document(client):
    response = client.get("/docs")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "/openapi.json" in response.text


def test_get_openapi_json_needs_no_token(client):
    # No Authorization header at all: the document and the docs page are public.
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/docs").status_code == 200
