"""Concurrent writers over real HTTP: a uvicorn server on loopback, many requests in flight at once.
No row is lost or duplicated, and the 24 hour cap holds under a race."""

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from timesheets.app import create_app

from ..conftest import ENTRY, bearer
from .servers import serve_in_thread

USERS = ("ann@example.com", "bob@example.com", "cat@example.com", "dan@example.com")
REQUESTS = 100


@pytest.fixture
def base_url(settings) -> Iterator[str]:
    """The app served by uvicorn in a background thread on a free loopback port."""
    with serve_in_thread(create_app(settings)) as url:
        yield url


async def _post_all(
    base_url: str, requests: list[tuple[dict[str, str], dict]]
) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(requests))
    async with httpx.AsyncClient(
        base_url=base_url, limits=limits, timeout=30, trust_env=False
    ) as http:
        # One request first, so that the key set is fetched before the burst.
        assert (await http.get("/timesheets", headers=requests[0][0])).status_code == 200
        return await asyncio.gather(
            *(http.post("/timesheets", json=body, headers=headers) for headers, body in requests)
        )


def _listed(base_url: str, headers: dict[str, str]) -> list[dict]:
    with httpx.Client(base_url=base_url, trust_env=False) as http:
        response = http.get("/timesheets", headers=headers)
    assert response.status_code == 200
    entries: list[dict] = response.json()
    return entries


def test_concurrent_creates_never_collide_or_lose_rows(base_url, make_token):
    tokens = {user: bearer(make_token(user)) for user in USERS}
    requests = [
        (
            tokens[USERS[n % len(USERS)]],
            {**ENTRY, "date": f"2017-07-{n % 28 + 1:02d}", "hours": 0.5, "notes": f"request {n}"},
        )
        for n in range(REQUESTS)
    ]
    responses = asyncio.run(_post_all(base_url, requests))

    assert [response.status_code for response in responses] == [201] * REQUESTS
    ids = [response.json()["id"] for response in responses]
    assert len(set(ids)) == REQUESTS
    stored = {user: _listed(base_url, tokens[user]) for user in USERS}
    assert sum(len(entries) for entries in stored.values()) == REQUESTS
    assert {entry["id"] for entries in stored.values() for entry in entries} == set(ids)
    for response, (headers, body) in zip(responses, requests, strict=True):
        entry = response.json()
        assert entry["notes"] == body["notes"]
        assert entry in stored[entry["user_id"]]
        assert tokens[entry["user_id"]] == headers


def test_concurrent_creates_on_one_day_stop_at_24_hours(base_url, make_token):
    ann, bob = bearer(make_token(USERS[0])), bearer(make_token(USERS[1]))
    requests = [(ann, {**ENTRY, "hours": 4, "notes": f"tap {n}"}) for n in range(10)]
    requests += [(bob, {**ENTRY, "hours": 4})] * 3  # another user, the same day: unaffected
    responses = asyncio.run(_post_all(base_url, requests))

    anns = [response.status_code for response in responses[:10]]
    assert sorted(anns) == [201] * 6 + [422] * 4
    assert [response.status_code for response in responses[10:]] == [201] * 3
    for response in responses[:10]:
        if response.status_code == 422:
            assert [error["field"] for error in response.json()["errors"]] == ["hours"]
    stored = _listed(base_url, ann)
    assert len(stored) == 6
    assert sum(entry["hours"] for entry in stored) == 24
    created = {response.json()["id"] for response in responses[:10] if response.status_code == 201}
    assert {entry["id"] for entry in stored} == created
