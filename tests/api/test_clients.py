"""The reference clients of clients.md, each request replayed byte for byte as the client sends it."""

import json
import time

import jwt
import pytest
from starlette.testclient import TestClient

from timesheets.app import create_app

from ..conftest import AUDIENCE, EMAIL_CLAIM, MANAGER, bearer

ANDROID_SCOPES = (
    "create:timesheets",
    "read:timesheets",
    "openid",
    "profile",
    "email",
    "offline_access",
)
SPA_SCOPES = ("openid", "profile", "read:timesheets", "create:timesheets")
SPA_ORIGIN = "http://localhost:4200"
ANDROID_JSON = "application/json; charset=utf-8"
LIST_FIELDS = {
    "id": int,
    "user_id": str,
    "project": str,
    "date": str,
    "hours": (int, float),
    "approved": bool,
}


def _android_body(date: str, hours: str = "7.5", project: str = "StoreZero") -> bytes:
    # Gson's output: no spaces, keys in declaration order.
    return f'{{"project":"{project}","date":"{date}","hours":"{hours}"}}'.encode()


def _rbac_token(issuer, email: str, permissions: list[str]) -> str:
    """An Auth0 RBAC access token: the granted permissions in `permissions` and no `scope` claim."""
    now = int(time.time())
    claims = {
        "iss": issuer.issuer,
        "sub": f"auth0|{email}",
        "aud": [AUDIENCE, "https://x/userinfo"],
        "iat": now,
        "exp": now + 600,
        "azp": "spa",
        "permissions": permissions,
        EMAIL_CLAIM: email,
    }
    key = issuer.keys[-1]
    return jwt.encode(claims, key.private_key, algorithm="RS256", headers={"kid": key.kid})


def _field_names(response) -> set[str]:
    return {error["field"] for error in response.json().get("errors", [])}


@pytest.fixture
def android(make_token):
    return bearer(make_token("ann@example.com", ANDROID_SCOPES))


@pytest.fixture
def android_manager(make_token):
    return bearer(make_token("mia@example.com", (*ANDROID_SCOPES, "approve:timesheets")))


@pytest.fixture
def spa(make_token):
    return bearer(make_token("ann@example.com", SPA_SCOPES))


# --- Android app --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("java_date", "expected"),
    [
        ("Mon Jul 10 14:32:11 GMT+02:00 2017", "2017-07-10"),
        ("Mon Jul 10 14:32:11 PDT 2017", "2017-07-10"),
        ("Mon Jul 10 14:32:11 CEST 2017", "2017-07-10"),
        ("Mon Jul 10 14:32:11 2017", "2017-07-10"),
        ("Mon Jul 10 23:59:59 PDT 2017", "2017-07-10"),  # already Jul 11 in UTC
        ("Mon Jul 10 00:00:01 GMT+14:00 2017", "2017-07-10"),  # still Jul 9 in UTC
        ("Sun Jul 09 23:30:00 GMT-09:30 2017", "2017-07-09"),
        ("Wed Mar 01 00:15:00 CET 2017", "2017-03-01"),
        ("Thu Feb 29 23:59:59 GMT+00:00 2024", "2024-02-29"),
    ],
)
def test_android_create_takes_calendar_date_as_written(client, android, java_date, expected):
    response = client.post(
        "/timesheets",
        content=_android_body(java_date),
        headers={**android, "Content-Type": ANDROID_JSON},
    )
    assert response.status_code == 201, response.text
    entry = response.json()
    assert entry["date"] == expected
    assert entry["hours"] == 7.5
    assert entry["project"] == "StoreZero"
    assert entry["user_id"] == "ann@example.com"
    assert response.headers["Location"] == f"/timesheets/{entry['id']}"
    assert client.get(response.headers["Location"], headers=android).json() == entry


def test_android_create_with_empty_hours_is_422_naming_hours(client, android):
    body = _android_body("Mon Jul 10 14:32:11 GMT+02:00 2017", hours="")
    response = client.post(
        "/timesheets", content=body, headers={**android, "Content-Type": ANDROID_JSON}
    )
    assert response.status_code == 422
    assert response.json()["error"] == "validation_failed"
    assert _field_names(response) == {"hours"}
    assert client.get("/timesheets", headers=android).json() == []


def test_android_double_tap_stores_two_entries(client, android):
    body = _android_body("Mon Jul 10 14:32:11 GMT+02:00 2017")
    headers = {**android, "Content-Type": ANDROID_JSON}
    first = client.post("/timesheets", content=body, headers=headers)
    second = client.post("/timesheets", content=body, headers=headers)
    assert (first.status_code, second.status_code) == (201, 201)
    assert first.json()["id"] != second.json()["id"]
    assert len(client.get("/timesheets", headers=android).json()) == 2


def _assert_android_parses(entries) -> None:
    assert isinstance(entries, list)
    for entry in entries:
        for name, kind in LIST_FIELDS.items():
            assert entry.get(name) is not None, (name, entry)
            assert isinstance(entry[name], kind), (name, entry)
        assert not isinstance(entry["id"], bool)
        assert not isinstance(entry["hours"], bool)


def test_android_lists_are_arrays_of_complete_entries(client, android, android_manager, importer):
    headers = {**android, "Content-Type": ANDROID_JSON}
    for day in ("Mon Jul 10 14:32:11 GMT+02:00 2017", "Tue Jul 11 09:00:00 PDT 2017"):
        assert client.post("/timesheets", content=_android_body(day), headers=headers).is_success
    upload = {
        "user_id": "007",
        "date": "2017-05-10T17:40:20.095Z",
        "project": "StoreZero",
        "hours": 5,
    }
    assert client.post("/timesheets/upload", json=upload, headers=importer).status_code == 201
    empty = client.get("/timesheets", headers=android_manager)
    assert empty.status_code == 200 and empty.json() == []

    own = client.get("/timesheets", headers=android)
    pending = client.get("/approvals", headers=android_manager)
    assert own.status_code == pending.status_code == 200
    assert own.headers["content-type"].startswith("application/json")
    _assert_android_parses(own.json())
    _assert_android_parses(pending.json())
    assert len(own.json()) == 2 and len(pending.json()) == 3
    assert all(entry["approved"] is False for entry in pending.json())


def test_android_approve_with_empty_json_body_succeeds(client, android, android_manager):
    created = client.post(
        "/timesheets",
        content=_android_body("Mon Jul 10 14:32:11 PDT 2017"),
        headers={**android, "Content-Type": ANDROID_JSON},
    ).json()
    response = client.put(
        f"/approvals/{created['id']}",
        content=b"",
        headers={**android_manager, "Content-Type": "application/json"},
    )
    assert response.is_success
    assert response.json()["approved"] is True
    listed = client.get("/timesheets", headers=android).json()
    assert listed[0]["approved"] is True and listed[0]["status"] == "approved"
    assert client.get("/approvals", headers=android_manager).json() == []


# --- Angular SPA --------------------------------------------------------------------------------


def _spa_post(client, headers, body: dict) -> object:
    return client.post(
        "/timesheets",
        content=json.dumps(body).encode(),
        headers={**headers, "Origin": SPA_ORIGIN, "Content-Type": "application/json"},
    )


def test_spa_create_from_other_origin_is_201_with_cors_header(client, spa):
    response = _spa_post(client, spa, {"date": "2017-07-10", "project": "StoreZero", "hours": 8})
    assert response.status_code == 201
    assert response.headers["Access-Control-Allow-Origin"] in ("*", SPA_ORIGIN)
    assert "location" in response.headers["Access-Control-Expose-Headers"].lower()
    entry = response.json()
    assert (entry["date"], entry["project"], entry["hours"]) == ("2017-07-10", "StoreZero", 8)


def test_spa_create_with_null_hours_is_422_naming_hours(client, spa):
    response = _spa_post(client, spa, {"date": "2017-07-10", "project": "StoreZero", "hours": None})
    assert response.status_code == 422
    assert _field_names(response) == {"hours"}
    assert response.headers["Access-Control-Allow-Origin"] in ("*", SPA_ORIGIN)


def test_spa_create_without_project_is_422_naming_project(client, spa):
    response = _spa_post(client, spa, {"date": "2017-07-10", "hours": 8})
    assert response.status_code == 422
    assert _field_names(response) == {"project"}
    assert "project" in response.json()["message"]
    assert client.get("/timesheets", headers=spa).json() == []


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/timesheets"),
        ("GET", "/timesheets"),
        ("GET", "/approvals"),
        ("PUT", "/approvals/1"),
        ("PATCH", "/timesheets/1"),
        ("DELETE", "/timesheets/1"),
    ],
)
def test_spa_preflight_allows_authorization_and_content_type(client, method, path):
    response = client.options(
        path,
        headers={
            "Origin": SPA_ORIGIN,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] in ("*", SPA_ORIGIN)
    assert method in response.headers["Access-Control-Allow-Methods"]
    allowed = {
        name.strip().lower() for name in response.headers["Access-Control-Allow-Headers"].split(",")
    }
    assert {"authorization", "content-type"} <= allowed


def test_spa_lists_and_approves_with_empty_object(client, spa, make_token):
    mia = bearer(make_token("mia@example.com", (*SPA_SCOPES, "approve:timesheets")))
    created = _spa_post(client, spa, {"date": "2017-07-10", "project": "StoreZero", "hours": 4})
    entry_id = created.json()["id"]
    origin = {"Origin": SPA_ORIGIN}
    pending = client.get("/approvals", headers={**mia, **origin})
    assert pending.status_code == 200
    assert pending.headers["Access-Control-Allow-Origin"] in ("*", SPA_ORIGIN)
    assert [
        (e["id"], e["user_id"], e["project"], e["date"], e["hours"]) for e in pending.json()
    ] == [(entry_id, "ann@example.com", "StoreZero", "2017-07-10", 4)]
    approved = client.put(
        f"/approvals/{entry_id}",
        content=b"{}",
        headers={**mia, **origin, "Content-Type": "application/json"},
    )
    assert approved.status_code == 200
    assert approved.json()["status"] == "approved"
    own = client.get("/timesheets", headers={**spa, **origin})
    assert own.headers["Access-Control-Allow-Origin"] in ("*", SPA_ORIGIN)
    assert own.json()[0]["approved"] is True


def test_spa_error_responses_carry_cors_header(client):
    response = client.get("/timesheets", headers={"Origin": SPA_ORIGIN})
    assert response.status_code == 401
    assert response.headers["Access-Control-Allow-Origin"] in ("*", SPA_ORIGIN)


def test_spa_scopes_without_approve_cannot_list_approvals(client, spa):
    assert client.get("/approvals", headers=spa).status_code == 403


# --- batch importer -----------------------------------------------------------------------------

IMPORTER_ENTRY = {
    "user_id": "007",
    "date": "2017-05-10T17:40:20.095Z",
    "project": "StoreZero",
    "hours": 5,
}


def test_upload_ignores_read_only_fields_but_keeps_user_id(client, importer):
    sent = {**IMPORTER_ENTRY, "id": 99, "status": "approved", "approved": True}
    response = client.post("/timesheets/upload", json=sent, headers=importer)
    assert response.status_code == 201
    entry = response.json()
    assert (entry["user_id"], entry["status"], entry["approved"]) == ("007", "pending", False)
    assert entry["id"] == 1  # from the database, not the client


def test_importer_upload_one_answers_one_entry(client, importer, mia):
    response = client.post(
        "/timesheets/upload",
        content=json.dumps(IMPORTER_ENTRY).encode(),
        headers={**importer, "Content-Type": "application/json"},
    )
    assert response.status_code == 201
    entry = response.json()
    assert isinstance(entry["id"], int)
    assert entry["user_id"] == "007"
    assert entry["date"] == "2017-05-10"
    assert entry["hours"] == 5 and entry["status"] == "pending"
    assert [e["id"] for e in client.get("/approvals", headers=mia).json()] == [entry["id"]]


def test_importer_upload_array_answers_array(client, importer):
    items = [
        IMPORTER_ENTRY,
        {**IMPORTER_ENTRY, "user_id": "008", "hours": "2.25"},
        {**IMPORTER_ENTRY, "date": "2017-05-11T23:59:59.999-07:00"},
    ]
    response = client.post(
        "/timesheets/upload",
        content=json.dumps(items).encode(),
        headers={**importer, "Content-Type": "application/json"},
    )
    assert response.status_code == 201
    entries = response.json()
    assert isinstance(entries, list)
    assert [(e["user_id"], e["date"], e["hours"]) for e in entries] == [
        ("007", "2017-05-10", 5),
        ("008", "2017-05-10", 2.25),
        ("007", "2017-05-11", 5),
    ]
    assert len({e["id"] for e in entries}) == 3


def test_importer_token_cannot_read_or_create_own_entries(client, importer):
    assert client.get("/timesheets", headers=importer).status_code == 403
    assert client.post("/timesheets", json=IMPORTER_ENTRY, headers=importer).status_code == 403


# --- form-encoded bodies and token shapes -------------------------------------------------------


def test_form_encoded_create_succeeds(client, ann):
    response = client.post(
        "/timesheets",
        content=b"project=Store+Zero&date=2017-07-10&hours=7.5&notes=caf%C3%A9",
        headers={**ann, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 201, response.text
    entry = response.json()
    assert (entry["project"], entry["date"], entry["hours"], entry["notes"]) == (
        "Store Zero",
        "2017-07-10",
        7.5,
        "café",
    )


def test_rbac_permissions_without_scope_claim_grant_access(client, issuer):
    employee = bearer(
        _rbac_token(issuer, "ann@example.com", ["read:timesheets", "create:timesheets"])
    )
    manager = bearer(_rbac_token(issuer, "mia@example.com", list(MANAGER)))
    created = client.post(
        "/timesheets", json={"project": "P", "date": "2017-07-10", "hours": 1}, headers=employee
    )
    assert created.status_code == 201
    assert created.json()["user_id"] == "ann@example.com"
    assert client.get("/timesheets", headers=employee).json() == [created.json()]
    assert client.put(f"/approvals/{created.json()['id']}", headers=manager).status_code == 200
    assert client.delete(f"/timesheets/{created.json()['id']}", headers=employee).status_code == 403


def test_importer_token_user_is_its_subject_not_an_email(client, importer, mia):
    created = client.post("/timesheets/upload", json=IMPORTER_ENTRY, headers=importer).json()
    assert created["user_id"] == "007"
    assert client.put(f"/approvals/{created['id']}", headers=mia).status_code == 200


def test_responses_to_requests_without_origin_vary_on_origin(client, ann):
    # Caches must not hand a response made for no Origin to a browser that sends one.
    for response in (client.get("/timesheets", headers=ann), client.get("/healthz")):
        assert response.headers.get_list("Vary") == ["Origin"]
        assert "Access-Control-Allow-Origin" not in response.headers


def test_responses_to_a_browser_of_a_listed_origin_vary_on_origin_once(settings, ann):
    listed = settings.model_copy(update={"cors_origins": (SPA_ORIGIN,)})
    with TestClient(create_app(listed, prefetch_keys=False)) as client:
        response = client.get("/timesheets", headers={**ann, "Origin": SPA_ORIGIN})
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == SPA_ORIGIN
    assert response.headers.get_list("Vary") == ["Origin"]
    assert response.headers["X-Request-ID"]
