"""Versions and ETags: If-Match makes a stale write fail with 412 instead of losing an update;
If-None-Match makes a re-read cheap (304)."""

import pytest

from ..conftest import ENTRY, bearer, create_entry


def _tag(entry: dict) -> str:
    return f'"{entry["id"]}-{entry["version"]}"'


def test_create_answers_version_1_and_its_etag(client, ann):
    response = client.post("/timesheets", json=ENTRY, headers=ann)

    entry = response.json()
    assert entry["version"] == 1
    assert response.headers["ETag"] == f'"{entry["id"]}-1"'


def test_every_change_adds_one_to_the_version(client, ann, mia):
    entry = create_entry(client, ann)
    path = f"/timesheets/{entry['id']}"
    versions = [client.patch(path, json={"hours": 2}, headers=ann).json()["version"]]
    versions.append(client.put(f"/approvals/{entry['id']}", headers=mia).json()["version"])
    versions.append(client.put(f"/approvals/{entry['id']}", headers=mia).json()["version"])
    reopen = client.post(f"/approvals/{entry['id']}/reopen", json={"reason": "r"}, headers=mia)
    versions.append(reopen.json()["version"])
    reject = client.post(f"/approvals/{entry['id']}/reject", json={"reason": "r"}, headers=mia)
    versions.append(reject.json()["version"])

    assert versions == [2, 3, 3, 4, 5]  # approving again changes nothing
    got = client.get(path, headers=ann)
    assert got.json()["version"] == 5 and got.headers["ETag"] == f'"{entry["id"]}-5"'


def test_edit_lost_update_one_wins_and_the_other_gets_412(client, ann, make_token):
    phone = ann
    laptop = bearer(make_token("ann@example.com"))
    entry = create_entry(client, phone)
    path = f"/timesheets/{entry['id']}"
    read = client.get(path, headers=laptop).headers["ETag"]

    first = client.patch(path, json={"hours": 2}, headers={**phone, "If-Match": read})
    second = client.patch(path, json={"notes": "x"}, headers={**laptop, "If-Match": read})

    assert first.status_code == 200
    assert second.status_code == 412
    assert second.json()["error"] == "precondition_failed"
    stored = client.get(path, headers=ann).json()
    assert stored["hours"] == 2 and stored["notes"] == "" and stored["version"] == 2


@pytest.mark.parametrize(
    "if_match",
    ['"{id}-1"', '"999-1", "{id}-1"', "*"],
)
def test_edit_with_matching_if_match_succeeds(client, ann, if_match):
    entry = create_entry(client, ann)
    header = if_match.format(id=entry["id"])
    response = client.patch(
        f"/timesheets/{entry['id']}", json={"hours": 2}, headers={**ann, "If-Match": header}
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    "if_match",
    ['"{id}-2"', 'W/"{id}-1"', '"999-1"', "garbage", '"{id}-1x"'],
)
def test_edit_with_other_if_match_is_412_and_changes_nothing(client, ann, if_match):
    entry = create_entry(client, ann)
    header = if_match.format(id=entry["id"])
    response = client.patch(
        f"/timesheets/{entry['id']}", json={"hours": 2}, headers={**ann, "If-Match": header}
    )
    assert response.status_code == 412
    assert client.get(f"/timesheets/{entry['id']}", headers=ann).json() == entry


def test_delete_with_stale_if_match_is_412_and_keeps_the_entry(client, ann):
    entry = create_entry(client, ann)
    stale = _tag(entry)
    client.patch(f"/timesheets/{entry['id']}", json={"hours": 2}, headers=ann)

    response = client.delete(f"/timesheets/{entry['id']}", headers={**ann, "If-Match": stale})

    assert response.status_code == 412
    assert client.get(f"/timesheets/{entry['id']}", headers=ann).status_code == 200
    current = client.get(f"/timesheets/{entry['id']}", headers=ann).headers["ETag"]
    assert (
        client.delete(f"/timesheets/{entry['id']}", headers={**ann, "If-Match": current})
    ).status_code == 204


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        ("PUT", "", None),
        ("POST", "/reject", {"reason": "wrong project"}),
    ],
)
def test_decision_on_a_changed_entry_with_stale_if_match_is_412(
    client, ann, mia, method, suffix, body
):
    entry = create_entry(client, ann)
    stale = _tag(entry)
    client.patch(f"/timesheets/{entry['id']}", json={"hours": 2}, headers=ann)

    response = client.request(
        method,
        f"/approvals/{entry['id']}{suffix}",
        json=body,
        headers={**mia, "If-Match": stale},
    )

    assert response.status_code == 412
    stored = client.get(f"/timesheets/{entry['id']}", headers=ann).json()
    assert stored["status"] == "pending" and stored["version"] == 2


def test_approve_with_current_if_match_succeeds(client, ann, mia):
    entry = create_entry(client, ann)
    response = client.put(f"/approvals/{entry['id']}", headers={**mia, "If-Match": _tag(entry)})

    assert response.status_code == 200
    assert response.headers["ETag"] == f'"{entry["id"]}-2"'


def test_two_managers_deciding_on_one_version_one_wins(client, ann, mia, max_):
    entry = create_entry(client, ann)
    tag = _tag(entry)
    approved = client.put(f"/approvals/{entry['id']}", headers={**mia, "If-Match": tag})
    rejected = client.post(
        f"/approvals/{entry['id']}/reject",
        json={"reason": "no"},
        headers={**max_, "If-Match": tag},
    )

    assert approved.status_code == 200 and rejected.status_code == 412


def test_get_with_current_etag_in_if_none_match_is_304_without_body(client, ann):
    entry = create_entry(client, ann)
    path = f"/timesheets/{entry['id']}"
    tag = client.get(path, headers=ann).headers["ETag"]

    for header in (tag, f"W/{tag}", f'"1-99", {tag}', "*"):
        response = client.get(path, headers={**ann, "If-None-Match": header})
        assert response.status_code == 304, header
        assert response.content == b""
        assert response.headers["ETag"] == tag


def test_get_with_old_etag_in_if_none_match_is_200_with_new_etag(client, ann):
    entry = create_entry(client, ann)
    path = f"/timesheets/{entry['id']}"
    client.patch(path, json={"hours": 2}, headers=ann)

    response = client.get(path, headers={**ann, "If-None-Match": _tag(entry)})

    assert response.status_code == 200
    assert response.json()["hours"] == 2
    assert response.headers["ETag"] == f'"{entry["id"]}-2"'


def test_get_others_entry_with_if_none_match_is_404(client, ann, make_token):
    entry = create_entry(client, ann)
    bob = bearer(make_token("bob@example.com"))
    response = client.get(f"/timesheets/{entry['id']}", headers={**bob, "If-None-Match": "*"})
    assert response.status_code == 404
