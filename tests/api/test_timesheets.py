"""/timesheets: an employee's own entries, their listing, paging, edits and the daily cap."""

import json
import re

import pytest

from timesheets.service.entries import COLUMNS, entry_from_row

from ..conftest import EMPLOYEE, ENTRY, bearer, create_entry

TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z")
LINK = re.compile(r'<([^>]+)>; rel="next"')


@pytest.fixture
def bob(make_token):
    return bearer(make_token("bob@example.com", EMPLOYEE))


def _upload(client, importer, items: list[dict]) -> list[dict]:
    response = client.post("/timesheets/upload", json=items, headers=importer)
    assert response.status_code == 201, response.text
    entries: list[dict] = response.json()
    return entries


def _ids(response) -> list[int]:
    assert response.status_code == 200, response.text
    return [entry["id"] for entry in response.json()]


def _next_link(response) -> str | None:
    match = LINK.fullmatch(response.headers.get("Link", ""))
    return match.group(1) if match else None


def _all_pages(client, headers, url: str) -> tuple[list[list[int]], list[str]]:
    pages, links = [], []
    while url:
        response = client.get(url, headers=headers)
        body = response.json()
        assert isinstance(body, list)
        pages.append([entry["id"] for entry in body])
        url = _next_link(response)
        if url:
            links.append(url)
        assert len(pages) < 100, "paging does not end"
    return pages, links


# --- create and read ----------------------------------------------------------------------------


def test_create_returns_201_entry_and_location(client, ann):
    response = client.post("/timesheets", json={**ENTRY, "notes": "on site"}, headers=ann)
    assert response.status_code == 201
    entry = response.json()
    assert response.headers["Location"] == f"/timesheets/{entry['id']}"
    assert isinstance(entry["id"], int) and not isinstance(entry["id"], bool)
    assert {
        k: entry[k]
        for k in (
            "user_id",
            "date",
            "project",
            "hours",
            "notes",
            "status",
            "approved",
            "rejection_reason",
        )
    } == {
        "user_id": "ann@example.com",
        "date": "2017-07-10",
        "project": "StoreZero",
        "hours": 7.5,
        "notes": "on site",
        "status": "pending",
        "approved": False,
        "rejection_reason": None,
    }
    assert TIMESTAMP.fullmatch(entry["created_at"]) and TIMESTAMP.fullmatch(entry["updated_at"])
    assert client.get(response.headers["Location"], headers=ann).json() == entry


def test_create_without_notes_stores_empty_notes(client, ann):
    assert create_entry(client, ann)["notes"] == ""


@pytest.mark.parametrize(
    ("hours", "expected"),
    [
        (0.01, 0.01),
        ("0.5", 0.5),
        (".25", 0.25),
        ("07.50", 7.5),
        (8, 8),
        (23.99, 23.99),
        (24, 24),
        ("24", 24),
        (1.1, 1.1),
    ],
)
def test_create_keeps_hours_exactly(client, ann, hours, expected):
    assert create_entry(client, ann, hours=hours)["hours"] == expected


@pytest.mark.parametrize(
    ("date", "expected"),
    [
        ("2017-07-10", "2017-07-10"),
        ("2017-07-10T23:30:00-07:00", "2017-07-10"),
        ("2017-07-10T00:30:00+14:00", "2017-07-10"),
        ("2017-07-10T12:00:00Z", "2017-07-10"),
        ("2017-07-10 08:00", "2017-07-10"),
        ("2024-02-29", "2024-02-29"),
    ],
)
def test_create_keeps_date_as_written(client, ann, date, expected):
    assert create_entry(client, ann, date=date)["date"] == expected


def test_create_ignores_read_only_fields(client, ann, mia):
    sneaky = {
        **ENTRY,
        "id": 4242,
        "user_id": "mia@example.com",
        "status": "approved",
        "approved": True,
        "rejection_reason": "x",
        "created_at": "2000-01-01T00:00:00Z",
    }
    response = client.post("/timesheets", json=sneaky, headers=ann)
    assert response.status_code == 201
    entry = response.json()
    assert entry["id"] != 4242
    assert entry["user_id"] == "ann@example.com"
    assert (entry["status"], entry["approved"], entry["rejection_reason"]) == (
        "pending",
        False,
        None,
    )
    assert not entry["created_at"].startswith("2000")
    assert client.get("/timesheets", headers=mia).json() == []
    assert _ids(client.get("/approvals", headers=mia)) == [entry["id"]]


def test_get_unknown_entry_is_404(client, ann):
    response = client.get("/timesheets/12345", headers=ann)
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


def test_others_entry_is_404_for_get_patch_and_delete(client, ann, bob):
    entry = create_entry(client, ann)
    path = f"/timesheets/{entry['id']}"
    assert client.get(path, headers=bob).status_code == 404
    assert client.patch(path, json={"hours": 1}, headers=bob).status_code == 404
    assert client.delete(path, headers=bob).status_code == 404
    assert client.get(path, headers=ann).json() == entry


def test_others_entry_404_is_indistinguishable_from_unknown(client, ann, bob):
    entry = create_entry(client, ann)
    theirs = client.get(f"/timesheets/{entry['id']}", headers=bob)
    unknown = client.get(f"/timesheets/{entry['id'] + 1000}", headers=bob)
    assert theirs.status_code == unknown.status_code == 404
    assert theirs.json()["error"] == unknown.json()["error"]
    assert set(theirs.json()) == set(unknown.json())


def test_unsupported_method_is_405_json(client, ann):
    response = client.delete("/timesheets", headers=ann)
    assert response.status_code == 405
    assert response.json()["error"] == "method_not_allowed"


# --- listing ------------------------------------------------------------------------------------


def test_list_without_entries_is_empty_array(client, ann):
    response = client.get("/timesheets", headers=ann)
    assert response.status_code == 200
    assert response.json() == []
    assert "Link" not in response.headers


def test_list_shows_only_own_entries_oldest_first(client, ann, bob):
    late = create_entry(client, ann, date="2017-07-12")
    early = create_entry(client, ann, date="2017-07-10")
    create_entry(client, bob, date="2017-07-11")
    same_day = create_entry(client, ann, date="2017-07-10", hours=1)
    middle = create_entry(client, ann, date="2017-07-11")
    listed = client.get("/timesheets", headers=ann)
    assert _ids(listed) == [early["id"], same_day["id"], middle["id"], late["id"]]
    assert listed.json()[0] == early


def test_lists_and_sync_show_non_ascii_text_byte_for_byte_as_the_entry_itself(client, ann):
    # Lists hand out the stored documents as UTF-8 bytes, joined without parsing them again:
    # newlines, commas and braces in the text must neither split a document nor merge two.
    text = 'Zürich – 日本語 😀 \u2028 "q" \\ é\nline two,\r\n\t{"id": 1}'
    first = create_entry(client, ann, date="2017-07-10", project=text, notes=text)
    second = create_entry(client, ann, date="2017-07-11", project=text, notes=text)
    one, two = (client.get(f"/timesheets/{e['id']}", headers=ann) for e in (first, second))
    listed = client.get("/timesheets", headers=ann)
    synced = client.get("/timesheets?updated_since=1970-01-01T00:00:00Z", headers=ann)
    page = client.get("/timesheets?limit=1", headers=ann)
    rest = client.get(_next_link(page) or "", headers=ann)

    assert one.json()["project"] == text and one.json()["notes"] == text
    assert listed.content == b"[" + one.content + b"," + two.content + b"]"
    assert synced.content == listed.content
    assert page.content == b"[" + one.content + b"]"
    assert rest.content == b"[" + two.content + b"]" and _next_link(rest) is None


def test_list_filters_by_date_range_inclusive(client, ann):
    ids = {day: create_entry(client, ann, date=f"2017-07-{day:02d}")["id"] for day in range(8, 14)}
    assert _ids(client.get("/timesheets?from=2017-07-10", headers=ann)) == [
        ids[d] for d in (10, 11, 12, 13)
    ]
    assert _ids(client.get("/timesheets?to=2017-07-10", headers=ann)) == [
        ids[d] for d in (8, 9, 10)
    ]
    assert _ids(client.get("/timesheets?from=2017-07-10&to=2017-07-11", headers=ann)) == [
        ids[10],
        ids[11],
    ]
    assert _ids(client.get("/timesheets?from=2017-07-12&to=2017-07-10", headers=ann)) == []


def test_list_takes_the_last_of_a_repeated_query_parameter(client, ann):
    create_entry(client, ann)
    assert client.get("/timesheets?status=bogus&status=pending", headers=ann).status_code == 200
    assert client.get("/timesheets?status=pending&status=bogus", headers=ann).status_code == 422


def test_the_first_of_two_authorization_headers_is_the_one_checked(client, ann):
    good, bad = ann["Authorization"], "Bearer not-a-token"
    both = [("Authorization", good), ("Authorization", bad)]
    assert client.get("/timesheets", headers=both).status_code == 200
    assert client.get("/timesheets", headers=both[::-1]).status_code == 401


def test_list_filters_by_project_exactly(client, ann):
    store = create_entry(client, ann, project="StoreZero")
    other = create_entry(client, ann, project="Store Zero", date="2017-07-11")
    assert _ids(client.get("/timesheets?project=StoreZero", headers=ann)) == [store["id"]]
    assert _ids(client.get("/timesheets?project=Store%20Zero", headers=ann)) == [other["id"]]
    assert _ids(client.get("/timesheets?project=store", headers=ann)) == []


def test_list_filters_by_status(client, ann, mia):
    pending = create_entry(client, ann, date="2017-07-10")
    approved = create_entry(client, ann, date="2017-07-11")
    rejected = create_entry(client, ann, date="2017-07-12")
    assert client.put(f"/approvals/{approved['id']}", headers=mia).status_code == 200
    reject = client.post(f"/approvals/{rejected['id']}/reject", json={"reason": "no"}, headers=mia)
    assert reject.status_code == 200
    for status, entry in (("pending", pending), ("approved", approved), ("rejected", rejected)):
        listed = client.get(f"/timesheets?status={status}", headers=ann)
        assert _ids(listed) == [entry["id"]]
        assert listed.json()[0]["status"] == status
    assert _ids(client.get("/timesheets?status=approved&from=2017-07-12", headers=ann)) == []


def test_list_pages_follow_link_until_done(client, ann):
    ids = [
        create_entry(client, ann, date=f"2017-07-{day:02d}", hours=1)["id"] for day in range(1, 8)
    ]
    pages, links = _all_pages(client, ann, "/timesheets?limit=3")
    assert pages == [ids[0:3], ids[3:6], ids[6:7]]
    assert len(links) == 2 and all("limit=3" in link and "cursor=" in link for link in links)


def test_list_pages_keep_filters_and_same_day_entries(client, ann):
    for day in (9, 10, 11):
        for hours in (1, 2, 3):
            create_entry(client, ann, date=f"2017-07-{day:02d}", hours=hours)
        create_entry(client, ann, date=f"2017-07-{day:02d}", project="Other", hours=4)
    expected = _ids(client.get("/timesheets?project=StoreZero&from=2017-07-10", headers=ann))
    assert len(expected) == 6
    pages, links = _all_pages(client, ann, "/timesheets?project=StoreZero&from=2017-07-10&limit=4")
    assert pages == [expected[:4], expected[4:]]
    assert "project=StoreZero" in links[0] and "from=2017-07-10" in links[0]


def test_list_with_exact_multiple_of_limit_has_no_empty_page(client, ann):
    ids = [
        create_entry(client, ann, date=f"2017-07-{day:02d}", hours=1)["id"] for day in range(1, 5)
    ]
    pages, _ = _all_pages(client, ann, "/timesheets?limit=2")
    assert pages == [ids[:2], ids[2:]]


def test_list_without_limit_returns_everything_up_to_the_cap(client, ann, importer):
    def upload(days: range) -> None:
        items = [
            {
                "user_id": "ann@example.com",
                "date": f"{2000 + d // 365}-01-01",
                "hours": 0.01,
                "project": f"P{d}",
            }
            for d in days
        ]
        _upload(client, importer, items)

    upload(range(0, 30))
    small = client.get("/timesheets", headers=ann)
    assert len(small.json()) == 30 and "Link" not in small.headers
    upload(range(30, 1000))
    upload(range(1000, 1001))
    first = client.get("/timesheets", headers=ann)
    assert len(first.json()) == 1000
    rest = client.get(_next_link(first), headers=ann)
    assert [entry["project"] for entry in rest.json()] == ["P1000"]
    assert _next_link(rest) is None


# --- edits --------------------------------------------------------------------------------------


def test_patch_pending_entry_changes_given_fields(client, ann):
    entry = create_entry(client, ann, notes="first")
    response = client.patch(
        f"/timesheets/{entry['id']}", json={"hours": "6.25", "project": "New"}, headers=ann
    )
    assert response.status_code == 200
    updated = response.json()
    assert (updated["hours"], updated["project"], updated["date"], updated["notes"]) == (
        6.25,
        "New",
        "2017-07-10",
        "first",
    )
    assert updated["created_at"] == entry["created_at"]
    assert updated["updated_at"] >= entry["updated_at"]
    assert client.get(f"/timesheets/{entry['id']}", headers=ann).json() == updated


def test_patch_can_clear_notes_and_move_date(client, ann):
    entry = create_entry(client, ann, notes="to be removed")
    updated = client.patch(
        f"/timesheets/{entry['id']}",
        json={"notes": "", "date": "Tue Jul 11 09:00:00 PDT 2017"},
        headers=ann,
    ).json()
    assert (updated["notes"], updated["date"]) == ("", "2017-07-11")


def test_patch_with_form_body_succeeds(client, ann):
    entry = create_entry(client, ann)
    response = client.patch(
        f"/timesheets/{entry['id']}",
        content=b"hours=3",
        headers={**ann, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200
    assert response.json()["hours"] == 3


def test_patch_ignores_read_only_fields(client, ann):
    entry = create_entry(client, ann)
    response = client.patch(
        f"/timesheets/{entry['id']}",
        json={
            "hours": 2,
            "status": "approved",
            "approved": True,
            "id": 7,
            "user_id": "bob@example.com",
        },
        headers=ann,
    )
    assert response.status_code == 200
    updated = response.json()
    assert (updated["id"], updated["user_id"], updated["status"], updated["approved"]) == (
        entry["id"],
        "ann@example.com",
        "pending",
        False,
    )


def test_patch_rejected_entry_returns_it_to_pending(client, ann, mia):
    entry = create_entry(client, ann)
    rejected = client.post(
        f"/approvals/{entry['id']}/reject", json={"reason": "wrong project"}, headers=mia
    ).json()
    assert (rejected["status"], rejected["rejection_reason"]) == ("rejected", "wrong project")
    response = client.patch(f"/timesheets/{entry['id']}", json={"project": "Right"}, headers=ann)
    assert response.status_code == 200
    updated = response.json()
    assert (updated["status"], updated["rejection_reason"], updated["approved"]) == (
        "pending",
        None,
        False,
    )
    assert _ids(client.get("/approvals", headers=mia)) == [entry["id"]]


def test_patch_approved_entry_is_409(client, ann, mia):
    entry = create_entry(client, ann)
    approved = client.put(f"/approvals/{entry['id']}", headers=mia).json()
    response = client.patch(f"/timesheets/{entry['id']}", json={"hours": 1}, headers=ann)
    assert response.status_code == 409
    assert response.json()["error"] == "conflict"
    assert client.get(f"/timesheets/{entry['id']}", headers=ann).json() == approved


def test_patch_within_cap_does_not_count_the_entry_twice(client, ann):
    first = create_entry(client, ann, hours=12)
    create_entry(client, ann, hours=12)
    response = client.patch(
        f"/timesheets/{first['id']}", json={"hours": 12, "notes": "same"}, headers=ann
    )
    assert response.status_code == 200
    assert (
        client.patch(f"/timesheets/{first['id']}", json={"hours": 11}, headers=ann).status_code
        == 200
    )


# --- deletion -----------------------------------------------------------------------------------


def test_delete_pending_entry_is_204(client, ann):
    keep = create_entry(client, ann, date="2017-07-11")
    entry = create_entry(client, ann)
    response = client.delete(f"/timesheets/{entry['id']}", headers=ann)
    assert response.status_code == 204
    assert response.content == b""
    assert client.get(f"/timesheets/{entry['id']}", headers=ann).status_code == 404
    assert client.delete(f"/timesheets/{entry['id']}", headers=ann).status_code == 404
    assert _ids(client.get("/timesheets", headers=ann)) == [keep["id"]]


def test_delete_rejected_entry_is_204(client, ann, mia):
    entry = create_entry(client, ann)
    client.post(f"/approvals/{entry['id']}/reject", json={"reason": "no"}, headers=mia)
    assert client.delete(f"/timesheets/{entry['id']}", headers=ann).status_code == 204


def test_delete_approved_entry_is_409(client, ann, mia):
    entry = create_entry(client, ann)
    client.put(f"/approvals/{entry['id']}", headers=mia)
    response = client.delete(f"/timesheets/{entry['id']}", headers=ann)
    assert response.status_code == 409
    assert client.get(f"/timesheets/{entry['id']}", headers=ann).json()["status"] == "approved"


def test_ids_are_not_reused_after_delete(client, ann):
    entry = create_entry(client, ann)
    client.delete(f"/timesheets/{entry['id']}", headers=ann)
    assert create_entry(client, ann)["id"] > entry["id"]


def test_delete_frees_hours_of_the_day(client, ann):
    full = create_entry(client, ann, hours=24)
    assert client.post("/timesheets", json={**ENTRY, "hours": 1}, headers=ann).status_code == 422
    client.delete(f"/timesheets/{full['id']}", headers=ann)
    create_entry(client, ann, hours=1)


# --- the daily cap ------------------------------------------------------------------------------


def test_daily_cap_allows_exactly_24_hours(client, ann):
    create_entry(client, ann, hours=7.5)
    create_entry(client, ann, hours=16.49)
    create_entry(client, ann, hours=0.01)
    response = client.post("/timesheets", json={**ENTRY, "hours": 0.01}, headers=ann)
    assert response.status_code == 422
    assert [error["field"] for error in response.json()["errors"]] == ["hours"]
    assert sum(e["hours"] for e in client.get("/timesheets", headers=ann).json()) == pytest.approx(
        24
    )


def test_daily_cap_refuses_24_01_hours(client, ann):
    create_entry(client, ann, hours=24)
    create_entry(client, ann, hours=0.01, date="2017-07-11")
    assert client.post("/timesheets", json={**ENTRY, "hours": 0.01}, headers=ann).status_code == 422
    response = client.patch(
        f"/timesheets/{_ids(client.get('/timesheets', headers=ann))[1]}",
        json={"date": "2017-07-10"},
        headers=ann,
    )
    assert response.status_code == 422


def test_daily_cap_is_per_user_and_per_date(client, ann, bob, importer):
    create_entry(client, ann, hours=24)
    create_entry(client, bob, hours=24)
    create_entry(client, ann, hours=24, date="2017-07-11")
    create_entry(client, ann, hours=24, date="2017-07-09")
    _upload(client, importer, [{**ENTRY, "user_id": "007", "hours": 24}])
    refused = client.post(
        "/timesheets/upload",
        json={**ENTRY, "user_id": "ann@example.com", "hours": 1},
        headers=importer,
    )
    assert refused.status_code == 422
    assert len(client.get("/timesheets", headers=ann).json()) == 3


def test_daily_cap_counts_approved_and_rejected_entries(client, ann, mia):
    approved = create_entry(client, ann, hours=10)
    rejected = create_entry(client, ann, hours=10)
    client.put(f"/approvals/{approved['id']}", headers=mia)
    client.post(f"/approvals/{rejected['id']}/reject", json={"reason": "no"}, headers=mia)
    assert client.post("/timesheets", json={**ENTRY, "hours": 4.01}, headers=ann).status_code == 422
    create_entry(client, ann, hours=4)


def test_stored_documents_match_the_columns_after_every_kind_of_write(client, ann, mia, importer):
    first = client.post("/timesheets", json=ENTRY, headers=ann).json()
    second = client.post("/timesheets", json={**ENTRY, "hours": 1}, headers=ann).json()
    client.post("/timesheets/upload", json={**ENTRY, "user_id": "007"}, headers=importer)
    client.post(f"/approvals/{first['id']}/reject", json={"reason": "no"}, headers=mia)
    client.patch(f"/timesheets/{first['id']}", json={"hours": 2}, headers=ann)
    client.put(f"/approvals/{second['id']}", headers=mia)

    async def stored() -> list[tuple[dict, dict]]:
        db = client.app.state.db
        rows = await db.fetch_all(f"SELECT {COLUMNS}, body FROM timesheet_entry ORDER BY id")
        return [(entry_from_row(row[:-1]), json.loads(row[-1])) for row in rows]

    pairs = client.portal.call(stored)
    assert len(pairs) == 3
    for columns, document in pairs:
        assert document == columns
    listed = client.get("/timesheets", headers=ann).json()
    assert [entry["hours"] for entry in listed] == [2, 1]
    assert [entry["status"] for entry in listed] == ["pending", "approved"]
