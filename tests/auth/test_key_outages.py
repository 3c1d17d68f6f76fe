"""Key-server faults against a real loopback key server: for each, what a client with a valid token
gets, and exactly how many key fetches were made.

Faults: slow (past the read timeout), erroring (500), garbage, oversized, redirecting, down at start,
down after warm-up for less and for more than the stale bound, rotating with overlap and removing a
key. Then the key set's lifetime (Cache-Control max-age / Expires, clamped), the background refresh
that runs before expiry, the cooldown between fetches, the memory of absent key ids, and start-up.

App-level tests say what a client sees (`client`, or an app built here with changed settings);
JwksCache-level tests drive the cache with a FakeClock wherever minutes would pass. No test sleeps
for more than about a second, and every wait is bounded."""

import asyncio
import email.utils
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from timesheets.app import create_app
from timesheets.auth import DevIssuer, InvalidToken, JwksCache, KeySourceUnavailable
from timesheets.auth.config import CachePolicy
from timesheets.config import Settings

from ..conftest import bearer, challenge
from ..keyserver import KeyServer
from .test_key_cache import (
    JWKS_PATH,
    FakeClock,
    assert_unavailable,
    issuer_config,
    padded_jwks,
    raw_body,
    redirect_to,
    same_key,
    send,
    settled,
)

APP_TIMEOUT = 0.3  # TIMESHEETS_JWKS_TIMEOUT_SECONDS for the app-level fault tests
Behaviour = Callable[[BaseHTTPRequestHandler], None]


# --- helpers -----------------------------------------------------------------------------------


def fresh(make_token: Callable[..., str], **options: Any) -> str:
    """A token no earlier request has used (a unique jti), so that nothing remembered decides."""
    claims = {"jti": secrets.token_hex(8), **options.pop("extra_claims", {})}
    return make_token(extra_claims=claims, **options)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.01)


async def wait_until_async(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.005)


def run(scenario: Callable[[httpx.AsyncClient], Any], *, timeout: float = 5.0) -> Any:
    """Runs `scenario(http)` in a fresh event loop, with an HTTP client built as the app builds it."""

    async def main() -> Any:
        limits = httpx.Timeout(timeout, connect=min(2.0, timeout))
        async with httpx.AsyncClient(
            timeout=limits, follow_redirects=False, trust_env=False
        ) as http:
            return await scenario(http)

    return asyncio.run(main())


@contextmanager
def app_client(
    settings: Settings, *, prefetch: bool = False, **changes: Any
) -> Iterator[TestClient]:
    """The app for `settings` with `changes`, started now (the key server's state is the test's)."""
    app = create_app(settings.model_copy(update=changes), prefetch_keys=prefetch)
    with TestClient(app) as client:
        yield client


def key_source(client: TestClient) -> Any:
    """The one issuer's key-source state, as /readyz reports it (`fetches` counts attempts)."""
    (state,) = client.app.state.verifier.key_sources()
    return state


def get(client: TestClient, token: str) -> httpx.Response:
    return client.get("/timesheets", headers=bearer(token))


def unknown_kid_challenge() -> str:
    return challenge('error="invalid_token"', 'error_description="unknown key id"')


def bring_back(server: KeyServer) -> None:
    """The stopped key server answers again, on the same port."""
    handler = server._httpd.RequestHandlerClass
    httpd = ThreadingHTTPServer(("127.0.0.1", server.port), handler)
    httpd.daemon_threads = True
    server._httpd = httpd
    server._thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    server._thread.start()


def serve_jwks(server: KeyServer, headers: dict[str, str | Callable[[], str]]) -> Behaviour:
    """The issuer's key set, with these response headers (a callable is evaluated per response)."""

    def behaviour(handler: BaseHTTPRequestHandler) -> None:
        values = {name: value() if callable(value) else value for name, value in headers.items()}
        body = json.dumps(server.issuer.jwks()).encode()
        send(handler, 200, body, {"Content-Type": "application/json", **values})

    return behaviour


# --- faults ------------------------------------------------------------------------------------


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Lets a slow key server answer at last (at the end of the test at the latest)."""
    event = threading.Event()
    yield event
    event.set()


@pytest.fixture
def elsewhere(signing_keys) -> Iterator[KeyServer]:
    """Where a redirect would lead: a server publishing the issuer's real key. Never called."""
    server = KeyServer(DevIssuer("https://elsewhere.example/", [signing_keys[0]]))
    yield server
    assert server.requests == []
    server.stop()


FAULTS = ["slow", "500", "garbage", "oversized", "redirect"]


@pytest.fixture
def faults(key_server: KeyServer, elsewhere: KeyServer, release: threading.Event):
    """The behaviour of each fault, by name."""

    def slow(handler: BaseHTTPRequestHandler) -> None:
        release.wait(3.0)  # far past the client's timeout
        send(handler, 200, json.dumps(key_server.issuer.jwks()).encode())

    return {
        "slow": slow,
        "500": lambda handler: send(handler, 500, b'{"error": "down"}'),
        "garbage": raw_body(b"<html><body>502 Bad Gateway</body></html>", "text/html"),
        "oversized": padded_jwks(key_server, 300 * 1024),  # the cap is 256 KiB
        "redirect": redirect_to(elsewhere.base_url + JWKS_PATH),
    }


@pytest.mark.parametrize("fault", FAULTS)
def test_get_timesheets_answers_503_until_key_server_recovers_from_fault_at_start(
    settings, make_token, key_server, faults, fault
):
    key_server.behaviour = faults[fault]

    with app_client(settings, jwks_timeout_seconds=APP_TIMEOUT) as client:
        for attempt in (1, 2):
            started = time.monotonic()
            response = get(client, fresh(make_token))
            assert_unavailable(response)  # never a 401 for a token that may well be valid
            assert "WWW-Authenticate" not in response.headers
            assert time.monotonic() - started < 2.0  # bounded by the timeout, not the server
            assert key_server.jwks_fetches == attempt  # cooldown 0: one fetch per request

        key_server.recover()
        assert get(client, fresh(make_token)).status_code == 200
        assert get(client, fresh(make_token)).status_code == 200
        assert key_server.jwks_fetches == 3
        assert key_source(client).last_error is None


@pytest.mark.parametrize("fault", FAULTS)
def test_get_timesheets_accepts_valid_tokens_without_fetch_when_key_server_faults_after_warm_up(
    settings, make_token, key_server, faults, fault
):
    with app_client(settings, jwks_timeout_seconds=APP_TIMEOUT) as client:
        assert get(client, fresh(make_token)).status_code == 200
        key_server.behaviour = faults[fault]

        for _ in range(3):
            started = time.monotonic()
            assert get(client, fresh(make_token)).status_code == 200
            assert time.monotonic() - started < 1.0  # known key, fresh set: no network at all

        assert key_server.jwks_fetches == 1


@pytest.mark.parametrize("fault", FAULTS)
def test_jwks_cache_serves_stale_keys_without_waiting_while_refresh_meets_fault(
    key_server, signing_keys, faults, fault
):
    clock = FakeClock()

    async def scenario(http: httpx.AsyncClient) -> None:
        cache = JwksCache(issuer_config(key_server), http, CachePolicy(), clock=clock)  # cooldown 5
        await cache.get_key("key-0", "RS256")
        key_server.behaviour = faults[fault]
        clock.advance(601.0)  # past the default lifetime: a refresh is due

        for _ in range(5):  # none waits for the refresh that the first one started
            key = await asyncio.wait_for(cache.get_key("key-0", "RS256"), timeout=0.2)
            assert same_key(key, signing_keys[0])
        await settled(cache)
        assert cache.fetches == 2
        state = cache.state()
        assert (state.key_count, state.fresh, state.usable) == (1, False, True)
        assert state.last_error

        clock.advance(5.0)  # the cooldown is over: one more attempt
        await cache.get_key("key-0", "RS256")
        await settled(cache)
        assert cache.fetches == 3

        key_server.recover()
        clock.advance(5.0)
        await cache.get_key("key-0", "RS256")
        await settled(cache)
        assert cache.fetches == 4
        assert cache.state().fresh and cache.state().last_error is None

    run(scenario, timeout=0.3)
    assert key_server.jwks_fetches == 4


def test_jwks_cache_gives_up_on_slow_key_server_after_timeout(key_server, release):
    def slow(handler: BaseHTTPRequestHandler) -> None:
        release.wait(3.0)
        send(handler, 200, json.dumps(key_server.issuer.jwks()).encode())

    key_server.behaviour = slow

    async def scenario(http: httpx.AsyncClient) -> JwksCache:
        cache = JwksCache(issuer_config(key_server), http, CachePolicy(cooldown=0))
        started = time.monotonic()
        with pytest.raises(KeySourceUnavailable):
            await cache.get_key("key-0", "RS256")
        assert 0.25 <= time.monotonic() - started < 1.5
        return cache

    cache = run(scenario, timeout=0.3)
    assert "Timeout" in (cache.state().last_error or "")
    assert key_server.jwks_fetches == 1


# --- down at start, down after warm-up ---------------------------------------------------------


def test_get_timesheets_answers_503_then_recovers_when_key_server_down_at_start(
    settings, make_token, key_server
):
    key_server.stop()

    with app_client(settings) as client:
        for attempt in (1, 2, 3):
            response = get(client, fresh(make_token))
            assert_unavailable(response)
            assert key_source(client).fetches == attempt
        assert key_source(client).key_count == 0

        bring_back(key_server)
        assert get(client, fresh(make_token)).status_code == 200
        assert get(client, fresh(make_token)).status_code == 200

        assert key_source(client).fetches == 4
        assert key_server.jwks_fetches == 1


def test_get_timesheets_accepts_valid_tokens_while_key_server_down_for_less_than_max_stale(
    settings, make_token, key_server
):
    # Keys live 1 s; a failed refresh is tried again no sooner than 1 s later (the cooldown).
    short = {"jwks_ttl_seconds": 1, "jwks_min_ttl_seconds": 1, "jwks_cooldown_seconds": 1}
    with app_client(settings, **short) as client:
        assert get(client, fresh(make_token)).status_code == 200
        key_server.stop()
        time.sleep(1.1)  # the keys are past their lifetime: stale, but within max_stale

        for _ in range(5):
            assert get(client, fresh(make_token)).status_code == 200

        wait_until(lambda: key_source(client).last_error is not None, 2.0, "the failed refresh")
        state = key_source(client)
        assert state.fetches == 2  # one background attempt: the others fell within the cooldown
        assert (state.key_count, state.fresh, state.usable) == (1, False, True)


def test_get_timesheets_answers_503_when_key_server_down_for_more_than_max_stale(
    settings, make_token, key_server
):
    limits = {"jwks_ttl_seconds": 1, "jwks_min_ttl_seconds": 1, "jwks_max_stale": 1}
    with app_client(settings, **limits) as client:
        assert get(client, fresh(make_token)).status_code == 200
        key_server.stop()
        time.sleep(1.1)  # past max_stale: the old keys may no longer decide

        for attempt in (2, 3):
            response = get(client, fresh(make_token))
            assert_unavailable(response)  # never 401
            assert key_source(client).fetches == attempt
        assert key_source(client).usable is False

        bring_back(key_server)
        assert get(client, fresh(make_token)).status_code == 200
        assert key_source(client).fetches == 4
        assert key_server.jwks_fetches == 2


def test_jwks_cache_serves_stale_keys_until_max_stale_with_fetches_within_budget(
    key_server, signing_keys
):
    clock = FakeClock()
    policy = CachePolicy(max_stale=3600.0)  # lifetime 600 s, 5 fetches a minute, 5 s apart

    async def scenario(http: httpx.AsyncClient) -> None:
        cache = JwksCache(issuer_config(key_server), http, policy, clock=clock)

        async def call() -> Any:
            key = await cache.get_key("key-0", "RS256")
            await settled(cache)
            return key

        await call()
        key_server.fail_with(500)

        clock.advance(601.0)
        for _ in range(60):  # a request every second for a minute, all on stale keys
            assert same_key(await call(), signing_keys[0])
            clock.advance(1.0)
        # Attempts at 601, 606, 611, 616 and 621 s: the budget of 5 a minute, 5 s apart.
        assert cache.fetches == 1 + 5

        clock.now = 1000.0 + 3599.0  # still within max_stale of the last good fetch
        assert same_key(await call(), signing_keys[0])
        assert cache.fetches == 7

        clock.now = 1000.0 + 3606.0  # beyond it: a request waits for a fetch, which fails
        with pytest.raises(KeySourceUnavailable):
            await call()
        assert cache.fetches == 8
        with pytest.raises(KeySourceUnavailable):  # within the cooldown: not even a fetch
            await call()
        assert cache.fetches == 8

        key_server.recover()
        clock.advance(5.0)
        assert same_key(await call(), signing_keys[0])
        assert cache.fetches == 9
        assert cache.state().fresh

    run(scenario)
    assert key_server.jwks_fetches == 9


def test_jwks_cache_serves_fresh_keys_without_fetch_when_max_stale_is_zero(key_server):
    # max_stale bounds stale keys only: a key set within its lifetime is always usable.
    clock = FakeClock()

    async def scenario(http: httpx.AsyncClient) -> None:
        cache = JwksCache(issuer_config(key_server), http, CachePolicy(max_stale=0), clock=clock)
        await cache.get_key("key-0", "RS256")
        for _ in range(10):
            clock.advance(30.0)
            await cache.get_key("key-0", "RS256")
        assert cache.state().usable
        assert cache.fetches == 1

        clock.advance(301.0)  # past the lifetime, and no stale keys allowed: a fetch decides
        await cache.get_key("key-0", "RS256")
        assert cache.fetches == 2

    run(scenario)
    assert key_server.jwks_fetches == 2


# --- rotation ----------------------------------------------------------------------------------


def test_get_timesheets_refuses_remembered_token_of_removed_key_after_refresh(
    client, make_token, key_server, signing_keys
):
    old = fresh(make_token, key=signing_keys[0])
    assert get(client, old).status_code == 200
    assert get(client, old).status_code == 200  # remembered by the verifier
    assert key_server.jwks_fetches == 1

    key_server.issuer.keys.append(signing_keys[1])  # overlap: both keys are published
    new = fresh(make_token, key=signing_keys[1])
    assert get(client, new).status_code == 200  # one fetch finds the new key
    assert get(client, old).status_code == 200
    assert get(client, fresh(make_token, key=signing_keys[0])).status_code == 200
    assert key_server.jwks_fetches == 2

    # The issuer retires key-0 and signs with key-2; a key-2 token brings the new set.
    key_server.issuer.keys[:] = [signing_keys[1], signing_keys[2]]
    assert get(client, fresh(make_token, key=signing_keys[2])).status_code == 200
    assert key_server.jwks_fetches == 3

    for token in (old, old, fresh(make_token, key=signing_keys[0])):
        response = get(client, token)
        assert response.status_code == 401, response.text
        assert response.headers["WWW-Authenticate"] == unknown_kid_challenge()
    assert key_server.jwks_fetches == 4  # one refresh for the retired kid, then remembered absent
    assert get(client, new).status_code == 200
    assert key_server.jwks_fetches == 4


def test_get_timesheets_refuses_remembered_token_once_routine_refresh_drops_its_key(
    settings, make_token, key_server, signing_keys
):
    key_server.issuer.keys.append(signing_keys[1])  # both keys published from the start
    short = {"jwks_ttl_seconds": 1, "jwks_min_ttl_seconds": 1}
    with app_client(settings, **short) as client:
        old = fresh(make_token, key=signing_keys[0])
        new = fresh(make_token, key=signing_keys[1])
        assert get(client, old).status_code == 200
        assert get(client, new).status_code == 200
        assert key_server.jwks_fetches == 1

        key_server.issuer.keys[:] = [signing_keys[1]]
        time.sleep(1.1)
        # The keys are past their lifetime: this request is answered from them while they are
        # refreshed in the background.
        assert get(client, new).status_code == 200
        wait_until(lambda: key_source(client).fresh, 2.0, "the routine refresh")
        assert key_server.jwks_fetches == 2

        response = get(client, old)
        assert response.status_code == 401, response.text
        assert response.headers["WWW-Authenticate"] == unknown_kid_challenge()
        assert get(client, new).status_code == 200


def test_jwks_cache_drops_removed_key_at_routine_refresh(key_server, signing_keys):
    clock = FakeClock()

    async def scenario(http: httpx.AsyncClient) -> None:
        cache = JwksCache(issuer_config(key_server), http, CachePolicy(), clock=clock)
        await cache.get_key("key-0", "RS256")
        key_server.issuer.keys.append(signing_keys[1])
        clock.advance(601.0)
        await cache.get_key("key-0", "RS256")
        await settled(cache)
        assert same_key(await cache.get_key("key-1", "RS256"), signing_keys[1])  # no fetch
        assert cache.fetches == 2

        key_server.issuer.keys[:] = [signing_keys[1]]
        clock.advance(601.0)
        assert same_key(await cache.get_key("key-0", "RS256"), signing_keys[0])  # still the old set
        await settled(cache)

        with pytest.raises(InvalidToken) as refused:
            await cache.get_key("key-0", "RS256")
        assert refused.value.description == "unknown key id"
        assert cache.fetches == 3  # within the cooldown of the refresh: no fetch of its own

    run(scenario)


# --- the key set's lifetime ---------------------------------------------------------------------


def in_seconds(seconds: float) -> Callable[[], str]:
    return lambda: email.utils.formatdate(time.time() + seconds, usegmt=True)


LIFETIME_POLICY = CachePolicy(default_ttl=600.0, min_ttl=60.0, max_ttl=3600.0)


@pytest.mark.parametrize(
    ("headers", "lifetime"),
    [
        pytest.param({"Cache-Control": "max-age=300"}, 300, id="max-age"),
        pytest.param(
            {"Cache-Control": "public, max-age=120, must-revalidate"},
            120,
            id="max-age-among-others",
        ),
        pytest.param({"Cache-Control": 'max-age="240"'}, 240, id="max-age-quoted"),
        pytest.param({"Cache-Control": "max-age=5"}, 60, id="max-age-below-floor"),
        pytest.param({"Cache-Control": "max-age=999999"}, 3600, id="max-age-above-ceiling"),
        pytest.param({"Cache-Control": "no-store"}, 60, id="no-store-floor"),
        pytest.param({"Cache-Control": "no-cache"}, 60, id="no-cache-floor"),
        pytest.param({"Expires": in_seconds(300)}, 300, id="expires"),
        pytest.param({"Expires": in_seconds(-300)}, 60, id="expires-past-floor"),
        pytest.param({"Expires": in_seconds(100_000)}, 3600, id="expires-above-ceiling"),
        pytest.param({"Expires": "0"}, 60, id="expires-invalid-floor"),
        pytest.param(
            {"Cache-Control": "max-age=120", "Expires": in_seconds(900)}, 120, id="max-age-wins"
        ),
        pytest.param({}, 600, id="no-headers-default"),
        pytest.param({"Cache-Control": "max-age=soon"}, 600, id="max-age-not-a-number"),
        pytest.param({"Cache-Control": "max-age=\xb2"}, 600, id="max-age-non-ascii-digit"),
    ],
)
def test_jwks_cache_keeps_keys_for_lifetime_key_server_asks_clamped(key_server, headers, lifetime):
    key_server.behaviour = serve_jwks(key_server, headers)
    clock = FakeClock()

    async def scenario(http: httpx.AsyncClient) -> None:
        cache = JwksCache(issuer_config(key_server), http, LIFETIME_POLICY, clock=clock)
        await cache.get_key("key-0", "RS256")
        clock.advance(lifetime - 2)  # Expires has a resolution of one second
        assert cache.state().fresh
        await cache.get_key("key-0", "RS256")
        assert cache.fetches == 1

        clock.advance(4)
        assert not cache.state().fresh
        await cache.get_key("key-0", "RS256")  # starts the refresh, answered from the old set
        await settled(cache)
        assert cache.fetches == 2

    run(scenario)


def test_jwks_cache_refreshes_in_background_before_keys_expire(key_server, signing_keys):
    lifetime = 1.0  # the key server sends no Cache-Control: the default, 1 s here
    policy = CachePolicy(default_ttl=lifetime, min_ttl=0.5, max_ttl=lifetime, cooldown=0)

    def fetched_at(cache: JwksCache) -> float:
        return time.monotonic() - (cache.state().age_seconds or 0.0)

    async def scenario(http: httpx.AsyncClient) -> None:
        cache = JwksCache(issuer_config(key_server), http, policy)
        cache.start()
        try:
            await wait_until_async(lambda: cache.generation == 1, 1.0, "the start-up fetch")
            first = fetched_at(cache)
            await wait_until_async(lambda: cache.generation == 2, 1.5, "the background refresh")
            second = fetched_at(cache)
            # Due at 75-90 % of the lifetime (jitter), and in any case before the expiry.
            assert 0.75 * lifetime - 0.02 <= second - first < lifetime

            await asyncio.sleep(first + lifetime + 0.01 - time.monotonic())
            # A request right after the first set expired: no fetch of its own, no wait.
            key = await asyncio.wait_for(cache.get_key("key-0", "RS256"), timeout=0.05)
            assert same_key(key, signing_keys[0])
            assert cache.fetches == 2 and cache._inflight is None
        finally:
            await cache.close()

    run(scenario)
    assert key_server.jwks_fetches == 2


def test_jwks_cache_does_not_retry_failed_background_fetch_at_once(key_server):
    key_server.fail_with(500)

    async def scenario(http: httpx.AsyncClient) -> JwksCache:
        cache = JwksCache(issuer_config(key_server), http, CachePolicy(cooldown=0))
        cache.start()
        try:
            await wait_until_async(lambda: cache.state().last_error is not None, 1.0, "a fetch")
            await asyncio.sleep(1.0)  # retries back off (5 s, doubling): none within a second
            return cache
        finally:
            await cache.close()

    cache = run(scenario)
    assert cache.fetches == 1
    assert key_server.jwks_fetches == 1


# --- cooldown and the memory of absent key ids --------------------------------------------------


def test_jwks_cache_waits_cooldown_between_fetches(key_server, signing_keys):
    clock = FakeClock()

    async def scenario(http: httpx.AsyncClient) -> None:
        cache = JwksCache(issuer_config(key_server), http, CachePolicy(cooldown=5.0), clock=clock)
        await cache.get_key("key-0", "RS256")
        key_server.issuer.keys.append(signing_keys[1])

        clock.advance(4.5)
        with pytest.raises(InvalidToken) as refused:
            await cache.get_key("key-1", "RS256")
        assert refused.value.description == "unknown key id"
        assert refused.value.details["after_refresh"] is False
        assert cache.fetches == 1

        clock.advance(0.5)  # 5 s since the last fetch
        assert same_key(await cache.get_key("key-1", "RS256"), signing_keys[1])
        assert cache.fetches == 2

        with pytest.raises(InvalidToken):
            await cache.get_key("made-up", "RS256")
        assert cache.fetches == 2

    run(scenario)
    assert key_server.jwks_fetches == 2


def test_jwks_cache_waits_cooldown_between_failed_cold_fetches(key_server, signing_keys):
    clock = FakeClock()
    key_server.fail_with(500)

    async def scenario(http: httpx.AsyncClient) -> None:
        cache = JwksCache(issuer_config(key_server), http, CachePolicy(cooldown=5.0), clock=clock)
        for _ in range(3):
            with pytest.raises(KeySourceUnavailable):
                await cache.get_key("key-0", "RS256")
            clock.advance(1.0)
        assert cache.fetches == 1

        key_server.recover()
        clock.advance(2.0)
        assert same_key(await cache.get_key("key-0", "RS256"), signing_keys[0])
        assert cache.fetches == 2

    run(scenario)


def test_get_timesheets_fetches_once_for_same_made_up_kid_twice(client, make_token, key_server):
    assert get(client, fresh(make_token)).status_code == 200

    for _ in range(3):
        forged = fresh(make_token, headers={"kid": "made-up"})
        response = get(client, forged)
        assert response.status_code == 401, response.text
        assert response.headers["WWW-Authenticate"] == unknown_kid_challenge()

    assert key_server.jwks_fetches == 2
    assert get(client, fresh(make_token)).status_code == 200
    assert key_server.jwks_fetches == 2


def test_jwks_cache_remembers_kid_found_absent_after_refresh(key_server):
    async def scenario(http: httpx.AsyncClient) -> None:
        cache = JwksCache(issuer_config(key_server), http, CachePolicy(cooldown=0))
        await cache.get_key("key-0", "RS256")
        outcomes = []
        for _ in range(2):
            with pytest.raises(InvalidToken) as refused:
                await cache.get_key("made-up", "RS256")
            outcomes.append(refused.value.details["after_refresh"])
        assert outcomes == [True, False]
        assert cache.fetches == 2

    run(scenario)
    assert key_server.jwks_fetches == 2


# --- start-up ----------------------------------------------------------------------------------


def test_app_start_fetches_keys_before_any_request(settings, make_token, key_server):
    with app_client(settings, prefetch=True) as client:
        wait_until(lambda: key_server.jwks_fetches == 1, 1.0, "the start-up fetch")
        wait_until(lambda: key_source(client).key_count == 1, 1.0, "the keys stored")
        assert get(client, fresh(make_token)).status_code == 200
        assert key_server.jwks_fetches == 1


def test_app_starts_and_answers_503_until_key_server_down_at_start_comes_back(
    settings, make_token, key_server, caplog
):
    caplog.set_level(logging.INFO, logger="timesheets.auth.jwks")
    key_server.fail_with(500)

    with app_client(settings, prefetch=True) as client:
        wait_until(lambda: key_server.jwks_fetches == 1, 1.0, "the start-up fetch")
        wait_until(lambda: key_source(client).last_error is not None, 1.0, "its failure")
        failures = [r for r in caplog.records if getattr(r, "outcome", None) == "error"]
        assert len(failures) == 1
        assert failures[0].levelno == logging.WARNING
        assert failures[0].event == "key_fetch"
        assert failures[0].issuer == key_server.base_url
        assert client.get("/healthz").status_code == 200

        assert_unavailable(get(client, fresh(make_token)))
        assert key_server.jwks_fetches == 2

        key_server.recover()
        assert get(client, fresh(make_token)).status_code == 200
        assert key_server.jwks_fetches == 3
