"""Reopening decided entries, and the approval lock on every path that changes an entry: an
approved entry is immutable to its owner (edit, delete, upload by external_ref)."""

from ..conftest import ENTRY, create_entry


def _approved(client, owner, approver, **fields) -> dict:
    entry = create_entry(client, owner, **fields)
    response = client.put(f"/approvals/{entry['id']}", headers=approver)
    assert response.status_code == 200
    approved: dict = response.json()
    return approved


def _upload(client, importer, items):
    return client.post("/timesheets/upload", json=items, headers=importer)


def test_reopen_approved_entry_returns_it_to_pending(client, ann, mia):
    entry = _approved(client, ann, mia)

    response = client.post(
        f"/approvals/{entry['id']}/reopen", json={"reason": "wrong week"}, headers=mia
    )

    assert response.status_code == 200
    reopened = response.json()
    assert reopened["status"] == "pending" and reopened["approved"] is False
    assert reopened["rejection_reason"] is None
    assert (
        client.patch(f"/timesheets/{entry['id']}", json={"hours": 1}, headers=ann).status_code
        == 200
    )


def test_reopen_rejected_entry_returns_it_to_pending(client, ann, mia):
    entry = create_entry(client, ann)
    client.post(f"/approvals/{entry['id']}/reject", json={"reason": "no"}, headers=mia)

    response = client.post(f"/approvals/{entry['id']}/reopen", json={"reason": "ok"}, headers=mia)

    assert response.status_code == 200 and response.json()["status"] == "pending"
    assert [e["id"] for e in client.get("/approvals", headers=mia).json()] == [entry["id"]]


def test_reopen_pending_entry_is_409(client, ann, mia):
    entry = create_entry(client, ann)
    response = client.post(f"/approvals/{entry['id']}/reopen", json={"reason": "x"}, headers=mia)
    assert response.status_code == 409


def test_reopen_own_entry_is_403(client, mia, make_token):
    from ..conftest import MANAGER, bearer

    entry = _approved(client, mia, bearer(make_token("max@example.com", MANAGER)))
    response = client.post(f"/approvals/{entry['id']}/reopen", json={"reason": "x"}, headers=mia)
    assert response.status_code == 403


def test_reopen_without_reason_is_422_and_changes_nothing(client, ann, mia):
    entry = _approved(client, ann, mia)
    for body in ({}, {"reason": "  "}, None):
        response = client.post(f"/approvals/{entry['id']}/reopen", json=body, headers=mia)
        assert response.status_code == 422
    assert client.get(f"/timesheets/{entry['id']}", headers=ann).json() == entry


def test_reopen_needs_approve_scope(client, ann, mia):
    entry = _approved(client, ann, mia)
    response = client.post(f"/approvals/{entry['id']}/reopen", json={"reason": "x"}, headers=ann)
    assert response.status_code == 403
    assert response.json()["error"] == "insufficient_scope"


def test_reopen_unknown_entry_is_404(client, mia):
    response = client.post("/approvals/999/reopen", json={"reason": "x"}, headers=mia)
    assert response.status_code == 404


# --- the approval lock, path by path -----------------------------------------------------------


def test_approval_lock_edit_is_409_and_changes_nothing(client, ann, mia):
    entry = _approved(client, ann, mia)
    response = client.patch(f"/timesheets/{entry['id']}", json={"hours": 1}, headers=ann)
    assert response.status_code == 409
    assert client.get(f"/timesheets/{entry['id']}", headers=ann).json() == entry


def test_approval_lock_delete_is_409_and_keeps_the_entry(client, ann, mia):
    entry = _approved(client, ann, mia)
    assert client.delete(f"/timesheets/{entry['id']}", headers=ann).status_code == 409
    assert client.get(f"/timesheets/{entry['id']}", headers=ann).json() == entry


def test_approval_lock_upload_changing_an_approved_ref_is_409_and_stores_nothing(
    client, importer, mia
):
    item = {**ENTRY, "user_id": "007", "external_ref": "row-1"}
    uploaded = _upload(client, importer, [item]).json()[0]
    approved = client.put(f"/approvals/{uploaded['id']}", headers=mia).json()

    response = _upload(
        client, importer, [{**item, "hours": 1}, {**ENTRY, "user_id": "008", "hours": 2}]
    )

    assert response.status_code == 409
    assert "row-1" in response.json()["detail"]
    assert client.get("/approvals", headers=mia).json() == []  # the new 008 entry is not stored
    again = _upload(client, importer, [item])  # the same data again: answered, unchanged
    assert again.status_code == 201 and again.json() == [approved]


def test_approval_lock_reject_of_approved_is_409(client, ann, mia):
    entry = _approved(client, ann, mia)
    response = client.post(f"/approvals/{entry['id']}/reject", json={"reason": "x"}, headers=mia)
    assert response.status_code == 409


def test_approval_lock_reopen_then_owner_may_edit_and_must_be_approved_again(client, ann, mia):
    entry = _approved(client, ann, mia)
    client.post(f"/approvals/{entry['id']}/reopen", json={"reason": "x"}, headers=mia)
    edited = client.patch(f"/timesheets/{entry['id']}", json={"hours": 1}, headers=ann).json()
    assert edited["status"] == "pending"
    assert client.put(f"/approvals/{entry['id']}", headers=mia).json()["status"] == "approved"


# --- uploads with external_ref ------------------------------------------------------------------


def test_upload_rerun_with_same_refs_creates_nothing_twice(client, importer, mia):
    items = [
        {**ENTRY, "user_id": "007", "external_ref": "row-1"},
        {**ENTRY, "user_id": "008", "external_ref": "row-2", "hours": 3},
    ]
    first = _upload(client, importer, items)
    second = _upload(client, importer, items)

    assert first.status_code == second.status_code == 201
    assert second.json() == first.json()
    assert [entry["external_ref"] for entry in first.json()] == ["row-1", "row-2"]
    assert len(client.get("/approvals", headers=mia).json()) == 2


def test_upload_rerun_with_a_new_ref_adds_only_that_entry(client, importer, mia):
    item = {**ENTRY, "user_id": "007", "external_ref": "row-1"}
    _upload(client, importer, [item])
    response = _upload(client, importer, [item, {**item, "external_ref": "row-2", "hours": 1}])

    assert response.status_code == 201
    assert len(client.get("/approvals", headers=mia).json()) == 2


def test_upload_rerun_with_changed_data_updates_the_pending_entry(client, importer):
    item = {**ENTRY, "user_id": "007", "external_ref": "row-1"}
    first = _upload(client, importer, item).json()
    second = _upload(client, importer, {**item, "hours": 4}).json()

    assert second["id"] == first["id"]
    assert second["hours"] == 4 and second["version"] == 2


def test_upload_same_ref_from_another_client_is_another_entry(client, importer, make_token):
    from ..conftest import bearer

    other = bearer(
        make_token(None, ("batch:upload",), subject="other@clients", extra_claims={"azp": "other"})
    )
    item = {**ENTRY, "user_id": "007", "external_ref": "row-1", "hours": 1}
    first = _upload(client, importer, item).json()
    second = _upload(client, other, item).json()

    assert second["id"] != first["id"]


def test_upload_ref_twice_in_one_upload_is_422(client, importer, mia):
    item = {**ENTRY, "user_id": "007", "external_ref": "row-1", "hours": 1}
    response = _upload(client, importer, [item, item])
    assert response.status_code == 422
    assert client.get("/approvals", headers=mia).json() == []


def test_upload_ref_of_a_deleted_entry_is_409(client, importer, make_token):
    from ..conftest import bearer

    owner = bearer(make_token("007"))
    item = {**ENTRY, "user_id": "007", "external_ref": "row-1"}
    entry = _upload(client, importer, item).json()
    assert client.delete(f"/timesheets/{entry['id']}", headers=owner).status_code == 204

    response = _upload(client, importer, item)

    assert response.status_code == 409
    assert client.get("/timesheets", headers=owner).json() == []


def test_upload_ref_for_another_user_is_409(client, importer):
    item = {**ENTRY, "user_id": "007", "external_ref": "row-1"}
    _upload(client, importer, item)
    assert _upload(client, importer, {**item, "user_id": "008"}).status_code == 409
