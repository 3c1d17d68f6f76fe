"""The audit trail: every change of an entry is an event, written in the same transaction as the
change, shown oldest first by GET /timesheets/{id}/history to the owner and to approvers."""

import pytest
from starlette.testclient import TestClient

from timesheets import audit
from timesheets.app import create_app

from ..conftest import ENTRY, bearer, create_entry


def _history(client, headers, entry_id: int) -> list[dict]:
    response = client.get(f"/timesheets/{entry_id}/history", headers=headers)
    assert response.status_code == 200, response.text
    events: list[dict] = response.json()
    return events


def _count(client, table: str) -> int:
    async def run() -> int:
        row = await client.app.state.db.fetch_one(f"SELECT COUNT(*) FROM {table}")
        return int(row[0])

    count: int = client.portal.call(run)
    return count


def test_history_records_every_kind_of_change_with_before_and_after(client, ann, mia):
    entry = create_entry(client, ann)
    path = f"/timesheets/{entry['id']}"
    client.patch(path, json={"hours": 2}, headers=ann)
    client.post(f"/approvals/{entry['id']}/reject", json={"reason": "no"}, headers=mia)
    client.patch(path, json={"hours": 3}, headers=ann)
    client.put(f"/approvals/{entry['id']}", headers=mia)
    client.post(f"/approvals/{entry['id']}/reopen", json={"reason": "again"}, headers=mia)
    client.delete(path, headers=ann)

    events = _history(client, ann, entry["id"])

    assert [event["action"] for event in events] == [
        "created",
        "edited",
        "rejected",
        "edited",
        "approved",
        "reopened",
        "deleted",
    ]
    assert [event["actor"] for event in events] == [
        "ann@example.com",
        "ann@example.com",
        "mia@example.com",
        "ann@example.com",
        "mia@example.com",
        "mia@example.com",
        "ann@example.com",
    ]
    assert events[0]["before"] is None and events[0]["after"] == entry
    assert events[1]["before"]["hours"] == 7.5 and events[1]["after"]["hours"] == 2
    assert events[2]["reason"] == "no" and events[5]["reason"] == "again"
    assert events[-1]["after"] is None and events[-1]["before"]["version"] == 6
    for earlier, later in zip(events, events[1:], strict=False):
        assert later["before"] == earlier["after"] or later["action"] == "deleted"
        assert later["at"] >= earlier["at"] and later["id"] > earlier["id"]
    assert {event["entry_id"] for event in events} == {entry["id"]}


def test_history_records_uploads_with_the_client_id(client, importer, mia):
    item = {**ENTRY, "user_id": "007", "external_ref": "row-1"}
    entry = client.post("/timesheets/upload", json=item, headers=importer).json()
    client.post("/timesheets/upload", json=item, headers=importer)  # unchanged: no event
    client.post("/timesheets/upload", json={**item, "hours": 1}, headers=importer)

    events = _history(client, mia, entry["id"])

    assert [event["action"] for event in events] == ["uploaded", "uploaded"]
    assert {event["client_id"] for event in events} == {"importer"}
    assert events[0]["actor"] == "importer@clients"


def test_history_is_404_for_someone_elses_entry_without_approve_scope(client, ann, make_token):
    entry = create_entry(client, ann)
    bob = bearer(make_token("bob@example.com"))
    assert client.get(f"/timesheets/{entry['id']}/history", headers=bob).status_code == 404
    assert client.get("/timesheets/999/history", headers=ann).status_code == 404


def test_history_is_open_to_an_approver_with_only_approve_scope(client, ann, make_token):
    entry = create_entry(client, ann)
    approver = bearer(make_token("mia@example.com", ("approve:timesheets",)))
    assert [e["action"] for e in _history(client, approver, entry["id"])] == ["created"]


def test_history_needs_read_or_approve_scope(client, ann, importer):
    entry = create_entry(client, ann)
    response = client.get(f"/timesheets/{entry['id']}/history", headers=importer)
    assert response.status_code == 403


def test_history_failed_request_records_no_event(client, ann, mia):
    entry = create_entry(client, ann)
    client.put(f"/approvals/{entry['id']}", headers=mia)
    client.patch(f"/timesheets/{entry['id']}", json={"hours": 1}, headers=ann)  # 409
    client.put(f"/approvals/{entry['id']}", headers=mia)  # again: no change, no event

    assert [e["action"] for e in _history(client, ann, entry["id"])] == ["created", "approved"]


@pytest.mark.parametrize("change", ["create", "edit", "delete", "approve", "reopen", "upload"])
def test_failure_after_the_change_before_commit_stores_neither_change_nor_event(
    settings, ann, mia, importer, monkeypatch, change
):
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        entry = create_entry(client, ann)
        if change == "reopen":
            client.put(f"/approvals/{entry['id']}", headers=mia)
        before = client.get(f"/timesheets/{entry['id']}", headers=ann).json()
        events = _count(client, "entry_event")
        real = audit.record_event

        async def record_then_fail(*args, **kwargs):
            await real(*args, **kwargs)  # the change and its event are written...
            raise RuntimeError("...and then the request fails before the commit")

        monkeypatch.setattr(audit, "record_event", record_then_fail)
        path = f"/timesheets/{entry['id']}"
        response = {
            "create": lambda: client.post("/timesheets", json={**ENTRY, "hours": 1}, headers=ann),
            "edit": lambda: client.patch(path, json={"hours": 1}, headers=ann),
            "delete": lambda: client.delete(path, headers=ann),
            "approve": lambda: client.put(f"/approvals/{entry['id']}", headers=mia),
            "reopen": lambda: client.post(
                f"/approvals/{entry['id']}/reopen", json={"reason": "x"}, headers=mia
            ),
            "upload": lambda: client.post(
                "/timesheets/upload", json={**ENTRY, "user_id": "007"}, headers=importer
            ),
        }[change]()
        monkeypatch.setattr(audit, "record_event", real)

        assert response.status_code == 500
        assert _count(client, "entry_event") == events
        assert client.get(path, headers=ann).json() == before
        assert len(client.get("/timesheets", headers=ann).json()) == 1
        assert client.get("/approvals", headers=mia).json() == (
            [before] if before["status"] == "pending" else []
        )
