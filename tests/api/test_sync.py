"""Sync: GET /timesheets?updated_since=... answers the caller's entries changed since a server
timestamp, deleted ones as tombstones, so that a phone can keep an offline copy."""

import re
import urllib.parse

import pytest

from ..conftest import bearer, create_entry

EPOCH = "1970-01-01T00:00:00Z"
SYNC_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")
LINK = re.compile(r'<([^>]+)>; rel="next"')


def _sync(client, headers, since: str, **params) -> tuple[list[dict], str]:
    query = urllib.parse.urlencode({"updated_since": since, **params})
    response = client.get(f"/timesheets?{query}", headers=headers)
    assert response.status_code == 200, response.text
    stamp = response.headers["X-Sync-Timestamp"]
    assert SYNC_TIMESTAMP.fullmatch(stamp)
    changes: list[dict] = response.json()
    return changes, stamp


def test_sync_from_the_epoch_answers_every_entry_in_change_order(client, ann):
    first = create_entry(client, ann, hours=1)
    second = create_entry(client, ann, hours=2)
    client.patch(f"/timesheets/{first['id']}", json={"notes": "later"}, headers=ann)

    changes, _ = _sync(client, ann, EPOCH)

    assert [entry["id"] for entry in changes] == [second["id"], first["id"]]
    assert changes[1]["notes"] == "later" and changes[1]["version"] == 2


def test_sync_since_last_timestamp_answers_only_later_changes(client, ann):
    old = create_entry(client, ann, hours=1)
    _, stamp = _sync(client, ann, EPOCH)
    new = create_entry(client, ann, hours=2)

    changes, next_stamp = _sync(client, ann, stamp)

    assert [entry["id"] for entry in changes] == [new["id"]]
    assert old["id"] not in [entry["id"] for entry in changes]
    assert _sync(client, ann, next_stamp)[0] == []


def test_sync_shows_a_deleted_entry_as_a_tombstone(client, ann):
    entry = create_entry(client, ann)
    _, stamp = _sync(client, ann, EPOCH)
    assert client.delete(f"/timesheets/{entry['id']}", headers=ann).status_code == 204

    changes, _ = _sync(client, ann, stamp)

    assert len(changes) == 1
    tombstone = changes[0]
    assert set(tombstone) == {"id", "deleted", "version", "updated_at"}
    assert tombstone["id"] == entry["id"] and tombstone["deleted"] is True
    assert tombstone["version"] == 2
    # Deleted entries are gone from every other read.
    assert client.get(f"/timesheets/{entry['id']}", headers=ann).status_code == 404
    assert client.get("/timesheets", headers=ann).json() == []
    assert (
        client.patch(f"/timesheets/{entry['id']}", json={"hours": 1}, headers=ann).status_code
        == 404
    )
    assert client.delete(f"/timesheets/{entry['id']}", headers=ann).status_code == 404


def test_sync_shows_an_approvers_decision_to_the_owner(client, ann, mia):
    entry = create_entry(client, ann)
    _, stamp = _sync(client, ann, EPOCH)
    client.put(f"/approvals/{entry['id']}", headers=mia)

    changes, _ = _sync(client, ann, stamp)

    assert [(change["id"], change["status"]) for change in changes] == [(entry["id"], "approved")]


def test_sync_shows_only_the_callers_entries(client, ann, make_token):
    bob = bearer(make_token("bob@example.com"))
    create_entry(client, bob)
    mine = create_entry(client, ann)

    assert [entry["id"] for entry in _sync(client, ann, EPOCH)[0]] == [mine["id"]]


def test_sync_pages_follow_link_and_see_every_change_once(client, ann):
    created = [create_entry(client, ann, hours=1, notes=str(n)) for n in range(5)]
    query = urllib.parse.urlencode({"updated_since": EPOCH, "limit": 2})
    url: str | None = f"/timesheets?{query}"
    seen: list[int] = []
    while url:
        response = client.get(url, headers=ann)
        assert response.status_code == 200
        seen += [entry["id"] for entry in response.json()]
        match = LINK.fullmatch(response.headers.get("Link", ""))
        url = match.group(1) if match else None
    assert seen == [entry["id"] for entry in created]


def test_sync_accepts_offsets_and_fractions(client, ann):
    create_entry(client, ann)
    for since in ("1970-01-01T01:00:00+01:00", "1970-01-01T00:00:00.123456789Z"):
        assert len(_sync(client, ann, since)[0]) == 1


@pytest.mark.parametrize(
    "since",
    [
        "yesterday",
        "2017-07-10",
        "2017-07-10T00:00:00",
        "2017-13-10T00:00:00Z",
        "0001-01-01T00:00:00+01:00",
        "",
    ],
)
def test_sync_with_malformed_updated_since_is_422(client, ann, since):
    response = client.get("/timesheets", params={"updated_since": since}, headers=ann)

    assert response.status_code == 422
    assert [error["field"] for error in response.json()["errors"]] == ["updated_since"]


def test_sync_with_other_filters_is_422(client, ann):
    response = client.get(
        "/timesheets", params={"updated_since": EPOCH, "status": "pending"}, headers=ann
    )
    assert response.status_code == 422


def test_sync_with_a_list_cursor_is_422(client, ann):
    for n in range(3):
        create_entry(client, ann, hours=1, notes=str(n))
    link = client.get("/timesheets?limit=1", headers=ann).headers["Link"]
    cursor = urllib.parse.parse_qs(urllib.parse.urlparse(LINK.fullmatch(link).group(1)).query)
    response = client.get(
        "/timesheets",
        params={"updated_since": EPOCH, "cursor": cursor["cursor"][0]},
        headers=ann,
    )
    assert response.status_code == 422


def test_deleted_entries_free_their_hours_and_leave_approvals(client, ann, mia):
    entry = create_entry(client, ann, hours=20)
    client.delete(f"/timesheets/{entry['id']}", headers=ann)

    assert client.get("/approvals", headers=mia).json() == []
    assert client.put(f"/approvals/{entry['id']}", headers=mia).status_code == 404
    create_entry(client, ann, hours=20)
