"""Bad input of every kind is refused with a 4xx JSON error that names the field at fault, never a
5xx, and leaves the stored entries exactly as they were."""

import base64
import json

import pytest
from starlette.testclient import TestClient

from timesheets.app import create_app

from ..conftest import ENTRY

JSON = {"Content-Type": "application/json"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
UPLOAD = {"user_id": "007", "date": "2017-05-10", "project": "StoreZero", "hours": 5}


def assert_refused(response, status: int, field: str | None = None, case: object = "") -> None:
    assert response.status_code == status, (case, response.text)
    assert response.headers["content-type"].startswith("application/json"), case
    body = response.json()
    assert isinstance(body["error"], str) and isinstance(body["message"], str), case
    assert "Traceback" not in response.text, case
    if field is not None:
        assert field in {error["field"] for error in body["errors"]}, (case, body)


@pytest.fixture
def stored(client, ann, mia, importer):
    """Seeds a few entries; returns a function that reads back everything a client can see."""
    for entry in (ENTRY, {**ENTRY, "date": "2017-07-11", "project": "Other", "hours": 8}):
        assert client.post("/timesheets", json=entry, headers=ann).status_code == 201
    assert client.post("/timesheets/upload", json=UPLOAD, headers=importer).status_code == 201

    def snapshot() -> tuple[object, object]:
        own = client.get("/timesheets", headers=ann)
        pending = client.get("/approvals", headers=mia)
        assert own.status_code == pending.status_code == 200
        return own.json(), pending.json()

    return snapshot


def _ann_entry_id(client, ann) -> int:
    entry_id: int = client.get("/timesheets", headers=ann).json()[0]["id"]
    return entry_id


# --- field values -------------------------------------------------------------------------------

BAD_HOURS = {
    "booleans": [True, False],
    "nan_infinity_strings": ["NaN", "nan", "Infinity", "-Infinity", "inf", "-inf"],
    "exponent_strings": ["1e1", "1E1", "7.5e0", "0x10"],
    "empty_strings": ["", " ", "\t"],
    "other_text": ["7,5", "7.5h", "+7.5", "7.", "½", "\u0667.\u0665", "seven"],
    "more_than_two_decimals": [7.555, "7.555", 0.001, "0.001"],
    "zero": [0, 0.0, "0", "0.00", -0.0],
    "negative": [-1, -0.5, "-1", "-0.5"],
    "over_24": [24.01, "24.01", 25, "25", 1e23, 10**30],
    "wrong_types": [None, [], {}, [7.5], {"value": 7.5}],
}


@pytest.mark.parametrize("values", BAD_HOURS.values(), ids=BAD_HOURS.keys())
def test_create_with_bad_hours_is_422_naming_hours(client, ann, stored, values):
    before = stored()
    for value in values:
        response = client.post("/timesheets", json={**ENTRY, "hours": value}, headers=ann)
        assert_refused(response, 422, "hours", value)
    assert stored() == before


BAD_DATES = {
    "wrong_types": [True, 20170710, None, [], {"date": "2017-07-10"}],
    "empty_strings": ["", "   "],
    "unknown_formats": [
        "2017/07/10",
        "10.07.2017",
        "07/10/2017",
        "July 10, 2017",
        "2017-7-10",
        "20170710",
        "2017-W28-1",
        "2017-191",
        "Mon Jul 10 2017",
        "yesterday",
        "Mon, 10 Jul 2017 14:32:11 GMT",
        "mon jul 10 14:32:11 PDT 2017",
        "Mon Jul 10 14:32:11 Europe/Berlin 2017",
        "\u0662\u0660\u0661\u0667-07-10",
        "Mon Jul \u0661\u0660 14:32:11 GMT+02:00 2017",
    ],
    "impossible_dates": [
        "2017-02-30",
        "2017-02-29",
        "2017-13-01",
        "2017-00-10",
        "2017-07-32",
        "0000-01-01",
        "2017-07-10T25:00:00Z",
        "2017-07-10T14:32:11+25:00",
        "2017-02-30T10:00:00.000Z",
        "Thu Feb 30 14:32:11 PDT 2017",
        "Tue Jul 10 14:32:11 GMT+02:00 2017",
    ],
}


@pytest.mark.parametrize("values", BAD_DATES.values(), ids=BAD_DATES.keys())
def test_create_with_bad_date_is_422_naming_date(client, ann, stored, values):
    before = stored()
    for value in values:
        response = client.post("/timesheets", json={**ENTRY, "date": value}, headers=ann)
        assert_refused(response, 422, "date", value)
    assert stored() == before


BAD_TEXT = {
    "project": [42, 7.5, True, None, [], {"name": "P"}, "", "   ", "x" * 201, "a\x00b"],
    "notes": [42, True, [], {"text": "n"}, "x" * 2001, "nul \x00 byte"],
}


@pytest.mark.parametrize("field", BAD_TEXT.keys())
def test_create_with_bad_text_field_is_422_naming_it(client, ann, stored, field):
    before = stored()
    for value in BAD_TEXT[field]:
        response = client.post("/timesheets", json={**ENTRY, field: value}, headers=ann)
        assert_refused(response, 422, field, value)
    assert stored() == before


def test_create_with_unknown_field_is_422_naming_it(client, ann, stored):
    before = stored()
    for extra in ("foo", "hour", "approved_by", "decided_by", "created_by"):
        response = client.post("/timesheets", json={**ENTRY, extra: 1}, headers=ann)
        assert_refused(response, 422, extra, extra)
    assert stored() == before


def test_create_with_missing_fields_is_422_naming_each(client, ann, stored):
    before = stored()
    response = client.post("/timesheets", json={}, headers=ann)
    assert_refused(response, 422)
    assert {"project", "date", "hours"} <= {e["field"] for e in response.json()["errors"]}
    assert stored() == before


def test_create_with_non_object_body_is_422(client, ann, stored):
    before = stored()
    for body in (b"[]", json.dumps([ENTRY]).encode(), b'"text"', b"42", b"null", b"true", b"7.5"):
        response = client.post("/timesheets", content=body, headers={**ann, **JSON})
        assert_refused(response, 422, "body", body)
    assert stored() == before


MALFORMED_JSON = {
    "NaN": b'{"project": "P", "date": "2017-07-10", "hours": NaN}',
    "Infinity": b'{"project": "P", "date": "2017-07-10", "hours": Infinity}',
    "-Infinity": b'{"project": "P", "date": "2017-07-10", "hours": -Infinity}',
    "1e400": b'{"project": "P", "date": "2017-07-10", "hours": 1e400}',
    "truncated": b'{"project": ',
    "single_quotes": b"{'project': 'P', 'date': '2017-07-10', 'hours': 1}",
    "trailing_comma": b'{"project": "P", "date": "2017-07-10", "hours": 1,}',
    "trailing_data": b'{"project": "P", "date": "2017-07-10", "hours": 1} {}',
    "invalid_utf8": b'{"project": "\xff\xfe", "date": "2017-07-10", "hours": 1}',
    "lone_surrogate": b'{"project": "\\ud800", "date": "2017-07-10", "hours": 1}',
    "bom": b'\xef\xbb\xbf{"project": "P", "date": "2017-07-10", "hours": 1}',
}


def test_create_with_malformed_json_is_400(client, ann, stored):
    before = stored()
    headers = {**ann, "Content-Type": "application/json; charset=utf-8"}
    for case, body in MALFORMED_JSON.items():
        response = client.post("/timesheets", content=body, headers=headers)
        assert_refused(response, 400, None, case)
        assert response.json()["error"] == "malformed_body"
    assert stored() == before


UNSUPPORTED_MEDIA = {
    "text/plain": json.dumps(ENTRY).encode(),
    None: json.dumps(ENTRY).encode(),
    "application/xml": b"<entry><project>P</project></entry>",
    "multipart/form-data; boundary=x": (
        b'--x\r\nContent-Disposition: form-data; name="project"\r\n\r\nP\r\n--x--\r\n'
    ),
    "application/json; charset=iso-8859-1": json.dumps(ENTRY).encode("latin-1"),
    "application/json; charset=utf-16": json.dumps(ENTRY).encode("utf-16"),
    "application/x-www-form-urlencoded; charset=windows-1252": b"project=Caf%E9",
}


def test_create_with_unsupported_media_type_is_415(client, ann, stored):
    before = stored()
    for content_type, body in UNSUPPORTED_MEDIA.items():
        headers = {**ann, "Content-Type": content_type} if content_type else ann
        response = client.post("/timesheets", content=body, headers=headers)
        assert_refused(response, 415, None, content_type)
    assert stored() == before


# --- form bodies --------------------------------------------------------------------------------


BAD_FORMS = [
    (b"project=A&project=B&date=2017-07-10&hours=1", 422, "project"),
    (b"project=A&date=2017-07-10&hours=1&hours=2", 422, "hours"),
    (b"project=A&date=2017-07-10&hours=", 422, "hours"),
    (b"project=A&date=2017-07-10&hours=true", 422, "hours"),
    (b"project=&date=2017-07-10&hours=1", 422, "project"),
    (b"project=A&date=&hours=1", 422, "date"),
    (b"project=A&hours=1", 422, "date"),
    (b"project=A&date=2017-07-10&hours=1&id=5&foo=bar", 422, "foo"),
    (b"project=%FF%FE&date=2017-07-10&hours=1", 400, None),  # percent-encoded, not UTF-8
    (b"project=\xff&date=2017-07-10&hours=1", 400, None),
    (b"project&date=2017-07-10&hours=1", 400, None),
]


def test_create_with_bad_form_body_is_refused(client, ann, stored):
    before = stored()
    for body, status, field in BAD_FORMS:
        response = client.post("/timesheets", content=body, headers={**ann, **FORM})
        assert_refused(response, status, field, body)
    assert stored() == before


# --- sizes --------------------------------------------------------------------------------------


@pytest.fixture
def small_client(settings):
    app = create_app(settings.model_copy(update={"max_body_bytes": 1024}))
    with TestClient(app) as test_client:
        yield test_client


def test_create_with_oversized_body_is_413(small_client, ann):
    entry = {**ENTRY, "notes": "x" * 1100}
    response = small_client.post("/timesheets", json=entry, headers=ann)
    assert_refused(response, 413)
    assert small_client.get("/timesheets", headers=ann).json() == []


def test_create_with_oversized_chunked_body_is_413(small_client, ann):
    def chunks():
        yield b'{"project": "P", "date": "2017-07-10", "hours": 1, "notes": "'
        for _ in range(20):
            yield b"x" * 100
        yield b'"}'

    response = small_client.post("/timesheets", content=chunks(), headers={**ann, **JSON})
    assert_refused(response, 413)
    assert small_client.get("/timesheets", headers=ann).json() == []


def test_upload_with_oversized_body_is_413(small_client, importer, mia):
    response = small_client.post("/timesheets/upload", json=[UPLOAD] * 30, headers=importer)
    assert_refused(response, 413)
    assert small_client.get("/approvals", headers=mia).json() == []


def test_create_over_default_body_cap_is_413(client, ann, stored):
    before = stored()
    body = b'{"project": "P", "date": "2017-07-10", "hours": 1, "notes": "' + b"x" * 2**20 + b'"}'
    response = client.post("/timesheets", content=body, headers={**ann, **JSON})
    assert_refused(response, 413)
    assert stored() == before


def test_upload_with_more_than_1000_entries_is_413(client, importer, stored):
    before = stored()
    items = [{**UPLOAD, "user_id": f"u{n}", "hours": 1} for n in range(1001)]
    response = client.post("/timesheets/upload", json=items, headers=importer)
    assert_refused(response, 413)
    assert stored() == before


# --- the upload ---------------------------------------------------------------------------------


BAD_UPLOADS = {
    "bad_hours": ([UPLOAD, {**UPLOAD, "hours": "abc"}, UPLOAD], "[1].hours"),
    "impossible_date": ([UPLOAD, UPLOAD, {**UPLOAD, "date": "2017-02-30"}], "[2].date"),
    "empty_user_id": ([{**UPLOAD, "user_id": ""}, UPLOAD], "[0].user_id"),
    "nul_in_user_id": ([UPLOAD, {**UPLOAD, "user_id": "00\x007"}], "[1].user_id"),
    "missing_user_id": (
        [UPLOAD, {key: v for key, v in UPLOAD.items() if key != "user_id"}],
        "[1].user_id",
    ),
    "string_element": ([UPLOAD, "not an entry"], "[1]"),
    "null_element": ([UPLOAD, None], "[1]"),
    "unknown_field": ([UPLOAD, {**UPLOAD, "hour": 5}], "[1].hour"),
    "empty_array": ([], "body"),
}


def test_upload_with_one_bad_element_stores_nothing(client, importer, stored):
    before = stored()
    for case, (items, field) in BAD_UPLOADS.items():
        response = client.post("/timesheets/upload", json=items, headers=importer)
        assert_refused(response, 422, field, case)
    assert stored() == before


def test_upload_with_non_object_body_is_422(client, importer, stored):
    before = stored()
    for body in (b'"text"', b"42", b"null", b"true", b"[[]]"):
        response = client.post("/timesheets/upload", content=body, headers={**importer, **JSON})
        assert_refused(response, 422, None, body)
    assert stored() == before


# --- the 24 hour daily cap ----------------------------------------------------------------------


def test_create_over_daily_cap_is_422_naming_hours(client, ann, stored):
    before = stored()  # ann has 7.5 h on 2017-07-10
    response = client.post("/timesheets", json={**ENTRY, "hours": 16.51}, headers=ann)
    assert_refused(response, 422, "hours")
    assert stored() == before


def test_upload_array_over_daily_cap_stores_nothing(client, importer, stored):
    before = stored()  # 007 has 5 h on 2017-05-10
    items = [{**UPLOAD, "user_id": "008"}, {**UPLOAD, "hours": 10}, {**UPLOAD, "hours": 9.01}]
    response = client.post("/timesheets/upload", json=items, headers=importer)
    assert_refused(response, 422, "hours")
    assert stored() == before


def test_upload_array_summing_over_cap_for_new_user_stores_nothing(client, importer, stored):
    before = stored()
    items = [
        {**UPLOAD, "user_id": "009", "hours": 12},
        {**UPLOAD, "user_id": "009", "hours": 12.01},
    ]
    response = client.post("/timesheets/upload", json=items, headers=importer)
    assert_refused(response, 422, "hours")
    assert stored() == before


def test_patch_raising_hours_over_daily_cap_is_422(client, ann, stored):
    assert client.post("/timesheets", json={**ENTRY, "hours": 10}, headers=ann).status_code == 201
    before = stored()  # ann: 7.5 + 10 h on 2017-07-10
    entry_id = _ann_entry_id(client, ann)
    response = client.patch(f"/timesheets/{entry_id}", json={"hours": 14.01}, headers=ann)
    assert_refused(response, 422, "hours")
    assert stored() == before


def test_patch_moving_entry_onto_full_day_is_422(client, ann, stored):
    assert client.post("/timesheets", json={**ENTRY, "hours": 16.5}, headers=ann).status_code == 201
    before = stored()  # ann: 24 h on 2017-07-10, 8 h on 2017-07-11
    moving = before[0][-1]
    assert moving["date"] == "2017-07-11"
    response = client.patch(f"/timesheets/{moving['id']}", json={"date": "2017-07-10"}, headers=ann)
    assert_refused(response, 422, "hours")
    assert stored() == before


# --- edits and decisions ------------------------------------------------------------------------


BAD_PATCHES = [
    ({}, "body"),
    ({"project": None}, "body"),
    ({"hours": 0}, "hours"),
    ({"hours": True}, "hours"),
    ({"hours": "NaN"}, "hours"),
    ({"date": "2017-02-30"}, "date"),
    ({"project": ""}, "project"),
    ({"project": 42}, "project"),
    ({"foo": "bar"}, "foo"),
    ([{"hours": 1}], "body"),
    ("hours", "body"),
]


def test_patch_with_bad_body_is_422(client, ann, stored):
    before = stored()
    path = f"/timesheets/{_ann_entry_id(client, ann)}"
    for body, field in BAD_PATCHES:
        assert_refused(client.patch(path, json=body, headers=ann), 422, field, body)
    assert stored() == before


def test_patch_with_malformed_or_unsupported_body_is_refused(client, ann, stored):
    before = stored()
    path = f"/timesheets/{_ann_entry_id(client, ann)}"
    assert_refused(client.patch(path, content=b'{"hours": NaN}', headers={**ann, **JSON}), 400)
    text = {**ann, "Content-Type": "text/plain"}
    assert_refused(client.patch(path, content=b'{"hours": 1}', headers=text), 415)
    assert_refused(client.patch(path, headers=ann), 422, "body")
    assert stored() == before


BAD_REJECTIONS = [
    (b"{}", "reason"),
    (b'{"reason": ""}', "reason"),
    (b'{"reason": "   "}', "reason"),
    (b'{"reason": 42}', "reason"),
    (b'{"reason": null}', "reason"),
    (b'{"reason": "late\\u0000"}', "reason"),
    (b'{"reason": "late", "foo": 1}', "foo"),
    (b"[]", "body"),
    (b"", "body"),
]


def test_reject_with_bad_body_is_422(client, mia, stored):
    before = stored()
    path = f"/approvals/{before[1][0]['id']}/reject"
    for body, field in BAD_REJECTIONS:
        response = client.post(path, content=body, headers={**mia, **JSON})
        assert_refused(response, 422, field, body)
    assert stored() == before


def test_approve_with_bad_body_is_refused(client, mia, stored):
    before = stored()
    entry_id = before[1][0]["id"]
    for body, content_type, status in [
        (b'{"foo": 1}', "application/json", 422),
        (b"[]", "application/json", 422),
        (b'"yes"', "application/json", 422),
        (b"{", "application/json", 400),
        (b"approve", "text/plain", 415),
    ]:
        headers = {**mia, "Content-Type": content_type}
        response = client.put(f"/approvals/{entry_id}", content=body, headers=headers)
        assert_refused(response, status, None, body)
    assert stored() == before


# --- ids in paths -------------------------------------------------------------------------------

BAD_IDS = [
    "99999999999999999999999",
    "9223372036854775808",
    "999999999999999999",
    "0",
    "abc",
    "1.5",
    "-1",
    "1e3",
    "%20",
    "%D9%A1",
    "0x1",
]
ID_ROUTES = [
    ("GET", "/timesheets/{}", None),
    ("PATCH", "/timesheets/{}", b'{"hours": 1}'),
    ("DELETE", "/timesheets/{}", None),
    ("PUT", "/approvals/{}", None),
    ("POST", "/approvals/{}/reject", b'{"reason": "late"}'),
]


@pytest.mark.parametrize(
    ("method", "template", "body"), ID_ROUTES, ids=[f"{m} {t}" for m, t, _ in ID_ROUTES]
)
def test_request_with_unknown_or_malformed_id_is_404(client, mia, stored, method, template, body):
    before = stored()
    headers = {**mia, **JSON} if body else mia
    for entry_id in BAD_IDS:
        response = client.request(method, template.format(entry_id), content=body, headers=headers)
        assert_refused(response, 404)
    assert stored() == before


# --- query parameters ---------------------------------------------------------------------------


def _cursor(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


BAD_QUERIES = [
    ("/timesheets", "limit=0", "limit"),
    ("/timesheets", "limit=-1", "limit"),
    ("/timesheets", "limit=abc", "limit"),
    ("/timesheets", "limit=1.5", "limit"),
    ("/timesheets", "limit=", "limit"),
    ("/timesheets", "limit=1001", "limit"),
    ("/timesheets", "limit=99999999999999999999999", "limit"),
    ("/timesheets", "from=garbage", "from"),
    ("/timesheets", "from=2017-02-30", "from"),
    ("/timesheets", "from=20170710", "from"),
    ("/timesheets", "from=2017-W28-1", "from"),
    ("/timesheets", "to=garbage", "to"),
    ("/timesheets", "to=2017-13-01", "to"),
    ("/timesheets", "status=bogus", "status"),
    ("/timesheets", "status=APPROVED", "status"),
    ("/timesheets", "status=", "status"),
    ("/timesheets", "cursor=garbage", "cursor"),
    ("/timesheets", "cursor=%21%21%21", "cursor"),
    ("/timesheets", f"cursor={_cursor('x|y')}", "cursor"),
    ("/timesheets", f"cursor={_cursor('2017-07-10|-1')}", "cursor"),
    ("/timesheets", f"cursor={_cursor('2017-07-10|99999999999999999999')}", "cursor"),
    ("/timesheets", f"cursor={_cursor('2017-02-30|1')}", "cursor"),
    ("/approvals", "limit=0", "limit"),
    ("/approvals", "limit=abc", "limit"),
    ("/approvals", "cursor=garbage", "cursor"),
]


def test_list_with_bad_query_is_422_naming_parameter(client, mia, stored):
    for path, query, field in BAD_QUERIES:
        response = client.get(f"{path}?{query}", headers=mia)
        assert_refused(response, 422, field, f"{path}?{query}")


def test_list_with_nul_in_project_filter_is_422(client, ann, stored):
    response = client.get("/timesheets?project=Store%00Zero", headers=ann)
    assert_refused(response, 422, "project")
