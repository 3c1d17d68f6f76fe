"""/approvals: managers see every user's pending entries and approve or reject them."""

import re

import pytest

from ..conftest import ENTRY, bearer, create_entry

LINK = re.compile(r'<([^>]+)>; rel="next"')


@pytest.fixture
def bob(make_token):
    return bearer(make_token("bob@example.com"))


def _pending_ids(client, headers) -> list[int]:
    response = client.get("/approvals", headers=headers)
    assert response.status_code == 200
    assert isinstance(response.json(), list)
    return [entry["id"] for entry in response.json()]


# --- the list -----------------------------------------------------------------------------------


def test_list_approvals_shows_pending_entries_of_all_users_oldest_first(
    client, ann, bob, mia, importer
):
    bobs = create_entry(client, bob, date="2017-07-12")
    anns = create_entry(client, ann, date="2017-07-11")
    mias = create_entry(client, mia, date="2017-07-13")
    uploaded = client.post(
        "/timesheets/upload", json={**ENTRY, "user_id": "007"}, headers=importer
    ).json()
    assert _pending_ids(client, mia) == [uploaded["id"], anns["id"], bobs["id"], mias["id"]]
    listed = client.get("/approvals", headers=mia).json()
    assert [entry["user_id"] for entry in listed] == [
        "007",
        "ann@example.com",
        "bob@example.com",
        "mia@example.com",
    ]
    assert listed[1] == anns


def test_list_approvals_leaves_out_decided_entries(client, ann, mia):
    approved, rejected, pending = (
        create_entry(client, ann, date=f"2017-07-1{n}") for n in range(3)
    )
    client.put(f"/approvals/{approved['id']}", headers=mia)
    client.post(f"/approvals/{rejected['id']}/reject", json={"reason": "no"}, headers=mia)
    assert _pending_ids(client, mia) == [pending["id"]]


def test_list_approvals_pages_follow_link_until_done(client, ann, bob, mia):
    ids = [
        create_entry(client, who, date=f"2017-07-{day:02d}", hours=1)["id"]
        for day in range(1, 6)
        for who in (ann, bob)
    ]
    pages, url = [], "/approvals?limit=4"
    while url:
        response = client.get(url, headers=mia)
        pages.append([entry["id"] for entry in response.json()])
        match = LINK.fullmatch(response.headers.get("Link", ""))
        url = match.group(1) if match else None
    assert pages == [ids[0:4], ids[4:8], ids[8:10]]


def test_list_approvals_is_empty_array_without_pending_entries(client, mia):
    response = client.get("/approvals", headers=mia)
    assert response.status_code == 200
    assert response.json() == []


# --- approving ----------------------------------------------------------------------------------


def test_approve_pending_entry_is_200_with_the_entry(client, ann, mia):
    entry = create_entry(client, ann)
    response = client.put(f"/approvals/{entry['id']}", headers=mia)
    assert response.status_code == 200
    approved = response.json()
    assert (approved["id"], approved["status"], approved["approved"]) == (
        entry["id"],
        "approved",
        True,
    )
    assert (approved["hours"], approved["user_id"]) == (entry["hours"], entry["user_id"])
    assert client.get(f"/timesheets/{entry['id']}", headers=ann).json() == approved


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (None, None),
        (b"", "application/json"),
        (b"", "text/plain"),
        (b"{}", "application/json"),
        (b"{ }\n", "application/json; charset=utf-8"),
    ],
    ids=["no_body", "empty_json", "empty_text", "empty_object", "empty_object_utf8"],
)
def test_approve_accepts_no_body_empty_body_or_empty_object(
    client, ann, mia, content, content_type
):
    entry = create_entry(client, ann)
    headers = {**mia, "Content-Type": content_type} if content_type else mia
    response = client.put(f"/approvals/{entry['id']}", content=content, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "approved"


def test_approve_twice_is_200_and_changes_nothing(client, ann, mia, max_):
    entry = create_entry(client, ann)
    first = client.put(f"/approvals/{entry['id']}", headers=mia)
    second = client.put(f"/approvals/{entry['id']}", headers=max_)
    assert first.status_code == second.status_code == 200
    assert second.json() == first.json()


def test_approve_own_entry_is_403(client, mia):
    entry = create_entry(client, mia)
    response = client.put(f"/approvals/{entry['id']}", headers=mia)
    assert response.status_code == 403
    assert response.json()["error"] == "forbidden"
    assert client.get(f"/timesheets/{entry['id']}", headers=mia).json()["status"] == "pending"


def test_approve_unknown_entry_is_404(client, mia):
    response = client.put("/approvals/424242", headers=mia)
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


def test_approve_rejected_entry_is_409(client, ann, mia):
    entry = create_entry(client, ann)
    client.post(f"/approvals/{entry['id']}/reject", json={"reason": "no"}, headers=mia)
    response = client.put(f"/approvals/{entry['id']}", headers=mia)
    assert response.status_code == 409
    assert response.json()["error"] == "conflict"
    assert client.get(f"/timesheets/{entry['id']}", headers=ann).json()["status"] == "rejected"


def test_approve_with_non_empty_unknown_body_is_422(client, ann, mia):
    entry = create_entry(client, ann)
    response = client.put(f"/approvals/{entry['id']}", json={"approved": True}, headers=mia)
    assert response.status_code == 422
    assert [error["field"] for error in response.json()["errors"]] == ["approved"]
    assert _pending_ids(client, mia) == [entry["id"]]


def test_approve_uploaded_entry_succeeds(client, mia, importer):
    uploaded = client.post(
        "/timesheets/upload", json={**ENTRY, "user_id": "007"}, headers=importer
    ).json()
    response = client.put(f"/approvals/{uploaded['id']}", headers=mia)
    assert response.status_code == 200
    assert response.json()["user_id"] == "007"


# --- rejecting ----------------------------------------------------------------------------------


def test_reject_pending_entry_records_reason(client, ann, mia):
    entry = create_entry(client, ann)
    response = client.post(
        f"/approvals/{entry['id']}/reject", json={"reason": "  wrong day "}, headers=mia
    )
    assert response.status_code == 200
    rejected = response.json()
    assert (rejected["status"], rejected["approved"], rejected["rejection_reason"]) == (
        "rejected",
        False,
        "wrong day",
    )
    assert client.get(f"/timesheets/{entry['id']}", headers=ann).json() == rejected
    assert _pending_ids(client, mia) == []


def test_reject_with_form_body_succeeds(client, ann, mia):
    entry = create_entry(client, ann)
    response = client.post(
        f"/approvals/{entry['id']}/reject",
        content=b"reason=too+many+hours",
        headers={**mia, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200
    assert response.json()["rejection_reason"] == "too many hours"


@pytest.mark.parametrize("body", [None, {}, {"reason": ""}, {"reason": "   "}, {"why": "late"}])
def test_reject_without_reason_is_422(client, ann, mia, body):
    entry = create_entry(client, ann)
    response = client.post(f"/approvals/{entry['id']}/reject", json=body, headers=mia)
    assert response.status_code == 422
    assert response.json()["error"] == "validation_failed"
    assert _pending_ids(client, mia) == [entry["id"]]


def test_reject_own_entry_is_403(client, mia):
    entry = create_entry(client, mia)
    response = client.post(f"/approvals/{entry['id']}/reject", json={"reason": "mine"}, headers=mia)
    assert response.status_code == 403
    assert _pending_ids(client, mia) == [entry["id"]]


def test_reject_approved_entry_is_409(client, ann, mia, max_):
    entry = create_entry(client, ann)
    client.put(f"/approvals/{entry['id']}", headers=mia)
    response = client.post(
        f"/approvals/{entry['id']}/reject", json={"reason": "changed my mind"}, headers=max_
    )
    assert response.status_code == 409
    assert response.json()["detail"] == "an approved entry cannot be rejected"
    assert client.get(f"/timesheets/{entry['id']}", headers=ann).json()["status"] == "approved"


def test_reject_unknown_entry_is_404(client, mia):
    response = client.post("/approvals/424242/reject", json={"reason": "x"}, headers=mia)
    assert response.status_code == 404


def test_rejected_entry_edited_by_owner_can_then_be_approved(client, ann, mia):
    entry = create_entry(client, ann)
    client.post(f"/approvals/{entry['id']}/reject", json={"reason": "hours"}, headers=mia)
    assert (
        client.patch(f"/timesheets/{entry['id']}", json={"hours": 6}, headers=ann).status_code
        == 200
    )
    assert _pending_ids(client, mia) == [entry["id"]]
    approved = client.put(f"/approvals/{entry['id']}", headers=mia).json()
    assert (approved["status"], approved["hours"], approved["rejection_reason"]) == (
        "approved",
        6,
        None,
    )
