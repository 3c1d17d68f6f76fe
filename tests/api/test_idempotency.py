"""Idempotency-Key on POST /timesheets and /timesheets/upload: a retry replays the first answer,
across connections, processes and hosts (the keys are in the database)."""

import asyncio
import datetime as dt

import httpx
import pytest

from timesheets import idempotency, service
from timesheets.app import create_app

from ..conftest import ENTRY, bearer
from .servers import serve_in_thread

KEY = {"Idempotency-Key": "6f1c2a52-5b0e-4d5e-9a57-3c1f0c7e9b11"}


def _listed(client, headers) -> list[dict]:
    response = client.get("/timesheets", headers=headers)
    assert response.status_code == 200
    entries: list[dict] = response.json()
    return entries


def _query(client, sql: str, params: dict | None = None) -> list:
    async def run() -> list:
        async with client.app.state.db.transaction() as tx:
            return list(await tx.fetch_all(sql, params))

    rows: list = client.portal.call(run)
    return rows


def test_create_with_key_repeated_replays_the_first_answer(client, ann):
    first = client.post("/timesheets", json=ENTRY, headers={**ann, **KEY})
    second = client.post("/timesheets", json=ENTRY, headers={**ann, **KEY})

    assert first.status_code == second.status_code == 201
    assert second.content == first.content
    assert second.headers["Location"] == first.headers["Location"]
    assert second.headers["ETag"] == first.headers["ETag"]
    assert second.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert len(_listed(client, ann)) == 1


def test_create_with_key_and_same_data_as_form_is_the_same_request(client, ann):
    first = client.post("/timesheets", json={**ENTRY, "hours": "7.5"}, headers={**ann, **KEY})
    form = {"project": "StoreZero", "date": "2017-07-10", "hours": "7.5"}
    second = client.post("/timesheets", data=form, headers={**ann, **KEY})

    assert second.status_code == 201 and second.content == first.content


def test_create_with_key_and_another_body_is_422(client, ann):
    client.post("/timesheets", json=ENTRY, headers={**ann, **KEY})
    response = client.post("/timesheets", json={**ENTRY, "hours": 2}, headers={**ann, **KEY})

    assert response.status_code == 422
    assert response.json()["error"] == "idempotency_key_reused"
    assert len(_listed(client, ann)) == 1


def test_create_with_key_on_another_path_is_422(client, ann, make_token):
    both = bearer(make_token("ann@example.com", ("create:timesheets", "batch:upload")))
    client.post("/timesheets", json=ENTRY, headers={**both, **KEY})
    response = client.post(
        "/timesheets/upload", json={**ENTRY, "user_id": "007"}, headers={**both, **KEY}
    )

    assert response.status_code == 422


def test_create_with_same_key_by_another_caller_is_independent(client, ann, make_token):
    bob = bearer(make_token("bob@example.com"))
    first = client.post("/timesheets", json=ENTRY, headers={**ann, **KEY})
    second = client.post("/timesheets", json=ENTRY, headers={**bob, **KEY})

    assert second.status_code == 201 and "Idempotent-Replayed" not in second.headers
    assert second.json()["id"] != first.json()["id"]
    assert second.json()["user_id"] == "bob@example.com"


def test_create_with_key_while_first_in_flight_is_409(client, ann, monkeypatch):
    body = {"project": "StoreZero", "date": "2017-07-10", "hours": 7.5}
    monkeypatch.setattr(idempotency, "WAIT_SECONDS", 0.5)  # the wait for the answer, shortened
    # Another process has claimed the key and is still working on it.
    claim_ = client.portal.call(
        lambda: idempotency.claim(
            client.app.state.db,
            caller="ann@example.com",
            key=KEY["Idempotency-Key"],
            fingerprint=_fingerprint(client, body),
        )
    )
    assert isinstance(claim_, idempotency.Claim)

    response = client.post("/timesheets", json=body, headers={**ann, **KEY})

    assert response.status_code == 409
    assert response.json()["error"] == "idempotency_key_in_use"
    assert _listed(client, ann) == []


def _fingerprint(client, payload) -> str:
    from starlette.requests import Request

    scope = {"type": "http", "method": "POST", "path": "/timesheets", "headers": []}
    from timesheets.routes.idempotent import fingerprint

    return fingerprint(Request(scope), payload)


def test_create_with_key_after_abandoned_claim_takes_it_over(client, ann, monkeypatch):
    monkeypatch.setattr(idempotency, "IN_FLIGHT_LEASE", dt.timedelta(seconds=-1))
    claim_ = client.portal.call(
        lambda: idempotency.claim(
            client.app.state.db,
            caller="ann@example.com",
            key=KEY["Idempotency-Key"],
            fingerprint=_fingerprint(client, ENTRY),
        )
    )
    assert isinstance(claim_, idempotency.Claim)

    response = client.post("/timesheets", json=ENTRY, headers={**ann, **KEY})

    assert response.status_code == 201
    # The abandoned attempt can no longer store an answer (its work would roll back).
    with pytest.raises(idempotency.IdempotencyKeyInUse):
        client.portal.call(
            lambda: idempotency.complete_alone(
                client.app.state.db, claim_, idempotency.StoredResponse(500, {}, b"")
            )
        )
    assert client.post("/timesheets", json=ENTRY, headers={**ann, **KEY}).content == (
        response.content
    )


def test_create_with_key_refused_422_replays_the_refusal(client, ann):
    first = client.post("/timesheets", json={**ENTRY, "hours": 25}, headers={**ann, **KEY})
    second = client.post("/timesheets", json={**ENTRY, "hours": 25}, headers={**ann, **KEY})

    assert first.status_code == second.status_code == 422
    assert second.content == first.content
    assert second.headers["Idempotent-Replayed"] == "true"


def test_create_with_key_after_server_error_can_be_retried(client, ann, monkeypatch):
    real = service.create_entries

    async def broken(*args, **kwargs):
        raise RuntimeError("the database went away mid-request")

    monkeypatch.setattr(service, "create_entries", broken)
    # The error is answered with the 500 page (and logged), not raised into the server.
    failed = client.post("/timesheets", json=ENTRY, headers={**ann, **KEY})
    assert failed.status_code == 500 and failed.json()["error"] == "internal_error"
    monkeypatch.setattr(service, "create_entries", real)

    response = client.post("/timesheets", json=ENTRY, headers={**ann, **KEY})
    assert response.status_code == 201
    assert "Idempotent-Replayed" not in response.headers
    assert len(_listed(client, ann)) == 1


@pytest.mark.parametrize(
    "key",
    ["", "x" * 256, "naïve", "tab\there", '""'],
)
def test_create_with_malformed_key_is_400_and_creates_nothing(client, ann, key):
    response = client.post(
        "/timesheets", json=ENTRY, headers={**ann, "Idempotency-Key": key.encode("utf-8")}
    )

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_idempotency_key"
    assert _listed(client, ann) == []


def test_create_with_quoted_key_is_the_same_as_bare(client, ann):
    first = client.post("/timesheets", json=ENTRY, headers={**ann, **KEY})
    quoted = {"Idempotency-Key": f'"{KEY["Idempotency-Key"]}"'}
    second = client.post("/timesheets", json=ENTRY, headers={**ann, **quoted})

    assert second.content == first.content and second.headers["Idempotent-Replayed"] == "true"


def test_create_with_expired_key_is_a_new_request_and_expired_keys_are_deleted(client, ann):
    client.post("/timesheets", json=ENTRY, headers={**ann, **KEY})
    past = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    _query(client, "UPDATE idempotency_key SET expires_at = :past", {"past": past})

    response = client.post("/timesheets", json={**ENTRY, "hours": 1}, headers={**ann, **KEY})

    assert response.status_code == 201 and "Idempotent-Replayed" not in response.headers
    assert len(_listed(client, ann)) == 2
    assert _query(client, "SELECT COUNT(*) FROM idempotency_key")[0][0] == 1


def test_create_without_key_twice_creates_two_entries(client, ann):
    client.post("/timesheets", json=ENTRY, headers=ann)
    client.post("/timesheets", json=ENTRY, headers=ann)

    assert len(_listed(client, ann)) == 2


def test_upload_with_key_repeated_replays_the_array(client, importer):
    items = [{**ENTRY, "user_id": "007"}, {**ENTRY, "user_id": "008", "hours": 3}]
    first = client.post("/timesheets/upload", json=items, headers={**importer, **KEY})
    second = client.post("/timesheets/upload", json=items, headers={**importer, **KEY})

    assert first.status_code == second.status_code == 201
    assert second.content == first.content
    assert second.headers["Idempotent-Replayed"] == "true"


# --- a retry storm over real connections -------------------------------------------------------

STORM = 30


async def _storm(base_urls: list[str], headers: dict[str, str]) -> list[httpx.Response]:
    clients = [
        httpx.AsyncClient(
            base_url=url, limits=httpx.Limits(max_connections=STORM), timeout=30, trust_env=False
        )
        for url in base_urls
    ]
    try:
        for http in clients:  # fetch the key set before the burst
            assert (await http.get("/timesheets", headers=headers)).status_code == 200
        return await asyncio.gather(
            *(
                clients[n % len(clients)].post(
                    "/timesheets", json=ENTRY, headers={**headers, **KEY}
                )
                for n in range(STORM)
            )
        )
    finally:
        for http in clients:
            await http.aclose()


def _assert_one_entry_and_identical_answers(responses, base_url, headers):
    assert {response.status_code for response in responses} == {201}
    assert len({response.content for response in responses}) == 1
    assert len({response.headers["ETag"] for response in responses}) == 1
    assert sum("Idempotent-Replayed" not in response.headers for response in responses) == 1
    with httpx.Client(base_url=base_url, trust_env=False) as http:
        listed = http.get("/timesheets", headers=headers).json()
    assert [entry["id"] for entry in listed] == [responses[0].json()["id"]]


def test_create_retry_storm_with_one_key_creates_one_entry(settings, make_token):
    ann = bearer(make_token("ann@example.com"))
    with serve_in_thread(create_app(settings)) as base_url:
        responses = asyncio.run(_storm([base_url], ann))
        _assert_one_entry_and_identical_answers(responses, base_url, ann)


@pytest.mark.postgres
def test_create_retry_storm_across_two_servers_on_postgres_creates_one_entry(
    settings, make_token, database_url
):
    if not database_url.startswith("postgres"):
        pytest.skip("two servers on one database: PostgreSQL")
    ann = bearer(make_token("ann@example.com"))
    # Two application instances, each with its own pool and state: two servers as far as the
    # database can tell.
    with (
        serve_in_thread(create_app(settings)) as first,
        serve_in_thread(create_app(settings)) as second,
    ):
        responses = asyncio.run(_storm([first, second], ann))
        _assert_one_entry_and_identical_answers(responses, first, ann)


def test_a_request_cancelled_while_its_write_commits_keeps_its_key_so_a_retry_writes_nothing(
    tmp_path, sqlite_template
):
    import shutil
    from types import SimpleNamespace

    from starlette.requests import Request

    from timesheets import db
    from timesheets.routes.idempotent import respond_once
    from timesheets.routes.timesheets import _created

    path = str(tmp_path / "cancelled.db")
    shutil.copy(sqlite_template, path)
    principal = SimpleNamespace(user_id="ann", subject="ann", client_id=None)
    payload = {"date": "2026-01-05", "project": "p", "hours": 1}

    async def scenario() -> tuple[int, str | None, int, int]:
        database = db.SqliteDatabase(path)

        async def post():
            request = Request(
                {
                    "type": "http",
                    "method": "POST",
                    "path": "/timesheets",
                    "query_string": b"",
                    "headers": [(b"idempotency-key", b"key-1")],
                    "app": SimpleNamespace(state=SimpleNamespace(db=database)),
                }
            )

            async def run(before_commit):
                return await service.create_entries(
                    database,
                    entries=[service.NewEntry("ann", dt.date(2026, 1, 5), "p", 100)],
                    actor=service.Actor("ann", "ann"),
                    before_commit=before_commit,
                )

            return await respond_once(request, principal, payload, run, _created)

        first: asyncio.Future[object] | None = None
        seen: list[str] = []

        def on_statement(sql: str) -> None:  # the work written, its group's COMMIT under way
            if sql.startswith("INSERT INTO timesheet_entry"):
                seen.append("entry")
            elif sql == "COMMIT" and seen == ["entry"] and first is not None:
                seen.append("commit")
                first.cancel()  # a shutdown's deadline, say

        database._writer._connection.set_trace_callback(on_statement)
        first = asyncio.ensure_future(post())
        with pytest.raises(asyncio.CancelledError):
            await first
        database._writer._connection.set_trace_callback(None)
        assert seen == ["entry", "commit"]
        retry = await post()  # the client tries again with the same key
        rows = await database.fetch_all("SELECT count(*) FROM timesheet_entry")
        keys = await database.fetch_all("SELECT count(*) FROM idempotency_key")
        await database.close()
        return retry.status_code, retry.headers.get("idempotent-replayed"), rows[0][0], keys[0][0]

    # the first answer replayed; the entry written once
    assert asyncio.run(scenario()) == (201, "true", 1, 1)
