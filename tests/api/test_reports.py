"""Reports on one's own entries (summary, CSV export) and GET /me."""

import csv
import io

import pytest

from ..conftest import bearer, create_entry


@pytest.fixture
def week(client, ann, make_token):
    """Ann's entries over two ISO weeks and two projects; Bob's are never counted."""
    create_entry(client, ann, date="2017-07-09", hours=1, project="A")  # Sunday: week 27
    create_entry(client, ann, date="2017-07-10", hours=2.5, project="A")  # Monday: week 28
    create_entry(client, ann, date="2017-07-10", hours=3, project="B")
    deleted = create_entry(client, ann, date="2017-07-11", hours=4, project="B")
    client.delete(f"/timesheets/{deleted['id']}", headers=ann)
    create_entry(client, bearer(make_token("bob@example.com")), date="2017-07-10", hours=8)


def test_summary_by_day_totals_hours_and_counts(client, ann, week):
    response = client.get("/timesheets/summary", headers=ann)

    assert response.status_code == 200
    assert response.json() == {
        "group_by": "day",
        "from": None,
        "to": None,
        "hours": 6.5,
        "entries": 3,
        "groups": [
            {"key": "2017-07-09", "hours": 1, "entries": 1},
            {"key": "2017-07-10", "hours": 5.5, "entries": 2},
        ],
    }


def test_summary_by_week_uses_iso_weeks(client, ann, week):
    groups = client.get("/timesheets/summary?group_by=week", headers=ann).json()["groups"]
    assert groups == [
        {"key": "2017-W27", "hours": 1, "entries": 1},
        {"key": "2017-W28", "hours": 5.5, "entries": 2},
    ]


def test_summary_by_project_within_dates(client, ann, week):
    body = client.get(
        "/timesheets/summary?group_by=project&from=2017-07-10&to=2017-07-31", headers=ann
    ).json()
    assert body["from"] == "2017-07-10" and body["to"] == "2017-07-31"
    assert body["groups"] == [
        {"key": "A", "hours": 2.5, "entries": 1},
        {"key": "B", "hours": 3, "entries": 1},
    ]
    assert body["hours"] == 5.5 and body["entries"] == 2


def test_summary_without_entries_is_zero(client, ann):
    body = client.get("/timesheets/summary", headers=ann).json()
    assert body["hours"] == 0 and body["entries"] == 0 and body["groups"] == []


@pytest.mark.parametrize("query", ["group_by=month", "from=July", "to=2017-02-30"])
def test_summary_with_bad_parameters_is_422(client, ann, query):
    assert client.get(f"/timesheets/summary?{query}", headers=ann).status_code == 422


def test_export_csv_lists_own_entries_oldest_first(client, ann, week):
    response = client.get("/timesheets/export.csv", headers=ann)

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert "attachment" in response.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(response.text)))
    assert rows[0] == [
        "id",
        "date",
        "project",
        "hours",
        "notes",
        "status",
        "rejection_reason",
        "created_at",
        "updated_at",
    ]
    assert [(row[1], row[2], row[3]) for row in rows[1:]] == [
        ("2017-07-09", "A", "1"),
        ("2017-07-10", "A", "2.5"),
        ("2017-07-10", "B", "3"),
    ]
    assert response.text.endswith("\r\n")


@pytest.mark.parametrize(
    "text",
    [
        '=HYPERLINK("http://evil.example","x")',
        "+1+1",
        "-2+3",
        "@SUM(A1:A2)",
        "\t=1+1",
        "\r=1+1",
    ],
)
def test_export_csv_neutralises_formula_like_cells(client, ann, mia, text):
    entry = create_entry(
        client, ann, project=f"{text}p" if text[0] not in "\t\r" else "P", notes=text
    )
    client.post(f"/approvals/{entry['id']}/reject", json={"reason": f"{text}r"}, headers=mia)

    rows = list(csv.reader(io.StringIO(client.get("/timesheets/export.csv", headers=ann).text)))

    project, notes, reason = rows[1][2], rows[1][4], rows[1][6]
    assert notes == "'" + text
    assert reason == "'" + text.strip() + "r"  # reasons are stripped, then neutralised
    if text[0] not in "\t\r":
        assert project == "'" + text + "p"


def test_export_csv_keeps_harmless_cells_as_they_are(client, ann):
    create_entry(client, ann, project="Store = Zero", notes='a, "quoted"\nline')
    rows = list(csv.reader(io.StringIO(client.get("/timesheets/export.csv", headers=ann).text)))
    assert rows[1][2] == "Store = Zero" and rows[1][4] == 'a, "quoted"\nline'


def test_export_csv_needs_read_scope(client, importer):
    assert client.get("/timesheets/export.csv", headers=importer).status_code == 403


def test_me_answers_user_subject_client_and_sorted_scopes(client, make_token):
    token = make_token(
        "ann@example.com",
        ("read:timesheets", "create:timesheets"),
        extra_claims={"azp": "android-app", "permissions": ["delete:timesheets"]},
    )
    response = client.get("/me", headers=bearer(token))

    assert response.status_code == 200
    assert response.json() == {
        "user_id": "ann@example.com",
        "subject": "auth0|ann@example.com",
        "client_id": "android-app",
        "scopes": ["create:timesheets", "delete:timesheets", "read:timesheets"],
    }


def test_me_with_a_token_without_scopes_is_200(client, make_token):
    response = client.get("/me", headers=bearer(make_token(None, (), subject="svc@clients")))
    assert response.status_code == 200
    assert response.json()["user_id"] == "svc@clients" and response.json()["scopes"] == []


def test_me_without_token_is_401(client):
    assert client.get("/me").status_code == 401
