"""The per-caller rate limit, shared by every process through the database."""

import asyncio
import time

import asyncpg
import pytest
from starlette.testclient import TestClient

from timesheets import db as database
from timesheets.app import create_app
from timesheets.errors import DatabaseUnavailable
from timesheets.ratelimit import RateLimiter, TooManyRequests


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0  # the start of a minute

    def __call__(self) -> float:
        return self.now


def _with_db(url: str, scenario) -> None:
    async def main() -> None:
        db = await database.connect(url)
        try:
            await scenario(db)
        finally:
            await db.close()

    asyncio.run(main())


def test_check_refuses_the_request_over_the_limit_until_the_next_minute(database_url):
    clock = Clock()

    async def scenario(db) -> None:
        limiter = RateLimiter(db, 5, clock=clock)
        for _ in range(5):
            limiter.check("auth0|ann")
        with pytest.raises(TooManyRequests) as refused:
            limiter.check("auth0|ann")
        limiter.check("auth0|bob")  # every caller has an allowance of their own
        clock.now += 20.5
        with pytest.raises(TooManyRequests) as still:
            limiter.check("auth0|ann")
        clock.now += 39.5
        limiter.check("auth0|ann")
        assert refused.value.headers() == {"Retry-After": "60"}
        assert still.value.headers() == {"Retry-After": "40"}

    _with_db(database_url, scenario)


def test_two_processes_share_one_allowance_through_the_database(database_url):
    clock = Clock()

    async def scenario(db) -> None:
        first, second = RateLimiter(db, 5, clock=clock), RateLimiter(db, 5, clock=clock)
        for _ in range(3):
            first.check("auth0|ann")
            second.check("auth0|ann")
        await first.sync()
        await second.sync()  # learns 6 in all
        with pytest.raises(TooManyRequests):
            second.check("auth0|ann")
        await first.sync()  # nothing new to add, but the totals come back with the next count
        with pytest.raises(TooManyRequests):
            second.check("auth0|ann")
        rows = await db.fetch_all("SELECT caller, hits FROM rate_limit_window")
        assert [tuple(row) for row in rows] == [("auth0|ann", 6)]

    _with_db(database_url, scenario)


async def _write(db, sql: str) -> None:
    async with db.transaction() as tx:
        await tx.fetch_all(sql)


def test_sync_keeps_counts_when_the_database_fails_and_adds_them_later(database_url):
    clock = Clock()

    async def scenario(db) -> None:
        limiter = RateLimiter(db, 100, clock=clock)
        for _ in range(4):
            limiter.check("auth0|ann")
        await _write(db, "ALTER TABLE rate_limit_window RENAME TO rate_limit_away")
        with pytest.raises((DatabaseUnavailable, asyncpg.PostgresError)):
            await limiter.sync()
        await _write(db, "ALTER TABLE rate_limit_away RENAME TO rate_limit_window")
        limiter.check("auth0|ann")
        await limiter.sync()
        row = await db.fetch_one("SELECT hits FROM rate_limit_window")
        assert row is not None and row[0] == 5

    _with_db(database_url, scenario)


def test_old_minutes_are_forgotten_here_and_deleted_from_the_database(database_url):
    clock = Clock()

    async def scenario(db) -> None:
        limiter = RateLimiter(db, 100, clock=clock)
        limiter.check("auth0|ann")
        await limiter.sync()
        clock.now += 180
        limiter.check("auth0|bob")
        await limiter.sync()
        rows = await db.fetch_all("SELECT caller FROM rate_limit_window")
        assert [row[0] for row in rows] == ["auth0|bob"]

    _with_db(database_url, scenario)


def _inside_one_minute(seconds: float = 5.0) -> None:
    """The allowance is per minute: waits (10 s at most) so that the next `seconds` stay in one."""
    to_next_minute = 60 - time.time() % 60
    if to_next_minute < seconds:
        time.sleep(to_next_minute + 0.2)


def _wait_for_sync(limiter: RateLimiter, total: int) -> None:
    """Until the background task has shared this worker's counts and learnt that the caller has
    used `total` in all (bounded: 2 s). A sync takes the counts before it writes them: an empty
    `_pending` alone can mean a sync still waiting for the database."""
    for _ in range(200):
        if not limiter._pending and total in limiter._known.values():
            return
        time.sleep(0.01)
    raise AssertionError(f"the counts were not synced to {total} within 2 s")


def test_requests_over_the_limit_get_429_with_retry_after(settings, ann, mia):
    limited = settings.model_copy(update={"rate_limit_per_minute": 3})
    _inside_one_minute()
    with TestClient(create_app(limited, prefetch_keys=False)) as client:
        answers = [client.get("/timesheets", headers=ann) for _ in range(4)]
        other = client.get("/timesheets", headers=mia)

    assert [answer.status_code for answer in answers] == [200, 200, 200, 429]
    assert answers[-1].json()["error"] == "rate_limited"
    assert 1 <= int(answers[-1].headers["Retry-After"]) <= 60
    assert other.status_code == 200  # another caller has an allowance of their own


def test_two_workers_on_one_database_share_the_allowance(settings, ann):
    limited = settings.model_copy(
        update={"rate_limit_per_minute": 3, "rate_limit_sync_seconds": 0.05}
    )
    _inside_one_minute()
    with (
        TestClient(create_app(limited, prefetch_keys=False)) as first,
        TestClient(create_app(limited, prefetch_keys=False)) as second,
    ):
        assert [first.get("/timesheets", headers=ann).status_code for _ in range(2)] == [200, 200]
        _wait_for_sync(first.app.state.rate_limiter, 2)
        assert second.get("/timesheets", headers=ann).status_code == 200
        _wait_for_sync(second.app.state.rate_limiter, 3)  # learns that 3 are used in all
        assert second.get("/timesheets", headers=ann).status_code == 429
