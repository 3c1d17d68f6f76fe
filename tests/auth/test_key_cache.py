"""The issuer's signing keys over a real loopback HTTP server: rotation, floods of made-up key ids,
an unreachable or misbehaving key server, and concurrent refreshes.

App-level tests go through the real app (`client`); the JwksCache-level ones drive the cache with
asyncio over the same real key server, with an injected clock wherever a minute would pass."""

import asyncio
import gzip
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from timesheets.app import create_app
from timesheets.auth import DevIssuer, InvalidToken, IssuerConfig, JwksCache, KeySourceUnavailable
from timesheets.auth.config import CachePolicy

from ..conftest import bearer, challenge
from ..keyserver import KeyServer

JWKS_PATH = ".well-known/jwks.json"
# The budget and stale-key tests look at the per-minute budget alone; the cooldown has its own tests.
NO_COOLDOWN = CachePolicy(cooldown=0)


def unknown_kid_challenge() -> str:
    return challenge('error="invalid_token"', 'error_description="unknown key id"')


def fresh(make_token: Callable[..., str], **options: Any) -> str:
    """A token no earlier request has used (a unique jti), so that nothing remembered decides."""
    return make_token(extra_claims={"jti": secrets.token_hex(8)}, **options)


# --- key server behaviours ---------------------------------------------------------------------


def send(
    handler: BaseHTTPRequestHandler,
    status: int,
    body: bytes,
    headers: dict[str, str] | None = None,
    *,
    content_length: bool = True,
    chunk: int = 64 * 1024,
) -> None:
    try:
        handler.send_response(status)
        for name, value in (headers or {"Content-Type": "application/json"}).items():
            handler.send_header(name, value)
        if content_length:
            handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        for start in range(0, len(body), chunk):
            handler.wfile.write(body[start : start + chunk])
    except (BrokenPipeError, ConnectionResetError):
        pass  # the client stopped reading, as it should for an oversized body


def redirect_to(location: str) -> Callable[[BaseHTTPRequestHandler], None]:
    return lambda handler: send(handler, 302, b"", {"Location": location})


def padded_jwks(server: KeyServer, size: int, *, content_length: bool = True):
    """A valid key set made larger than `size` bytes by an extra member."""

    def behaviour(handler: BaseHTTPRequestHandler) -> None:
        document = {**server.issuer.jwks(), "padding": "x" * size}
        send(handler, 200, json.dumps(document).encode(), content_length=content_length)

    return behaviour


def raw_body(body: bytes, content_type: str = "application/json"):
    return lambda handler: send(handler, 200, body, {"Content-Type": content_type})


def take_down(server: KeyServer, how: str) -> None:
    if how == "stopped":
        server.stop()
    else:
        server.fail_with(int(how))


@pytest.fixture
def other_server(signing_keys) -> Iterator[KeyServer]:
    """Another server publishing the issuer's real key: where a redirect would lead."""
    server = KeyServer(DevIssuer("https://elsewhere.example/", [signing_keys[0]]))
    yield server
    server.stop()


@contextmanager
def started(settings) -> Iterator[TestClient]:
    """The app started only now, e.g. after the key server was taken down."""
    with TestClient(create_app(settings)) as client:
        yield client


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"].isdigit()
    assert int(response.headers["Retry-After"]) > 0
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["error"] and body["message"]


# --- app level: rotation and floods ------------------------------------------------------------


def test_get_timesheets_accepts_rotated_key_with_one_extra_fetch(
    client, make_token, key_server, signing_keys
):
    assert client.get("/timesheets", headers=bearer(fresh(make_token))).status_code == 200
    fetches = key_server.jwks_fetches

    key_server.issuer.keys.append(signing_keys[1])
    rotated = fresh(make_token, key=signing_keys[1])
    assert client.get("/timesheets", headers=bearer(rotated)).status_code == 200
    assert key_server.jwks_fetches == fetches + 1

    for key in (signing_keys[0], signing_keys[1]):
        token = fresh(make_token, key=key)
        assert client.get("/timesheets", headers=bearer(token)).status_code == 200
    assert key_server.jwks_fetches == fetches + 1


def test_get_timesheets_limits_fetches_during_flood_of_unknown_kids(client, make_token, key_server):
    assert client.get("/timesheets", headers=bearer(fresh(make_token))).status_code == 200

    for n in range(30):
        forged = fresh(make_token, headers={"kid": secrets.token_hex(8)})
        response = client.get("/timesheets", headers=bearer(forged))
        assert response.status_code == 401, response.text
        assert response.headers["WWW-Authenticate"] == unknown_kid_challenge()
        if n % 5 == 4:
            valid = client.get("/timesheets", headers=bearer(fresh(make_token)))
            assert valid.status_code == 200, valid.text

    assert key_server.jwks_fetches <= 5
    assert client.get("/timesheets", headers=bearer(fresh(make_token))).status_code == 200
    assert key_server.jwks_fetches <= 5


# --- app level: the key server down ------------------------------------------------------------


@pytest.mark.parametrize("how", ["500", "503", "stopped"])
def test_get_timesheets_accepts_valid_token_with_warm_cache_while_key_server_down(
    client, make_token, key_server, how
):
    assert client.get("/timesheets", headers=bearer(fresh(make_token))).status_code == 200

    take_down(key_server, how)

    for _ in range(3):
        response = client.get("/timesheets", headers=bearer(fresh(make_token)))
        assert response.status_code == 200, response.text


@pytest.mark.parametrize("how", ["500", "stopped"])
def test_get_timesheets_answers_503_for_unknown_kid_with_warm_cache_while_key_server_down(
    client, make_token, key_server, how
):
    # The unknown key may be a new one that the key server would have listed: nothing decides.
    assert client.get("/timesheets", headers=bearer(fresh(make_token))).status_code == 200

    take_down(key_server, how)

    forged = fresh(make_token, headers={"kid": "new-key"})
    assert_unavailable(client.get("/timesheets", headers=bearer(forged)))


@pytest.mark.parametrize("how", ["500", "503", "404", "stopped"])
def test_get_timesheets_answers_503_with_cold_cache_while_key_server_down(
    settings, make_token, key_server, how
):
    take_down(key_server, how)

    with started(settings) as client:
        for _ in range(3):
            assert_unavailable(client.get("/timesheets", headers=bearer(fresh(make_token))))


def test_get_timesheets_recovers_when_key_server_comes_back(settings, make_token, key_server):
    key_server.fail_with(500)
    with started(settings) as client:
        assert_unavailable(client.get("/timesheets", headers=bearer(fresh(make_token))))
        key_server.recover()
        response = client.get("/timesheets", headers=bearer(fresh(make_token)))
        assert response.status_code == 200, response.text


# --- app level: a misbehaving key server -------------------------------------------------------


def test_get_timesheets_does_not_follow_key_server_redirect(
    settings, make_token, key_server, other_server
):
    key_server.behaviour = redirect_to(other_server.base_url + JWKS_PATH)

    with started(settings) as client:
        assert_unavailable(client.get("/timesheets", headers=bearer(fresh(make_token))))

    assert other_server.requests == []


def test_get_timesheets_refuses_oversized_key_set(settings, make_token, key_server):
    key_server.behaviour = padded_jwks(key_server, 300 * 1024)

    with started(settings) as client:
        assert_unavailable(client.get("/timesheets", headers=bearer(fresh(make_token))))


def test_get_timesheets_refuses_key_set_that_is_not_json(settings, make_token, key_server):
    key_server.behaviour = raw_body(b"<html><body>It works!</body></html>", "text/html")

    with started(settings) as client:
        assert_unavailable(client.get("/timesheets", headers=bearer(fresh(make_token))))


# --- JwksCache level ---------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def issuer_config(server: KeyServer) -> IssuerConfig:
    return IssuerConfig(server.issuer.issuer, server.base_url + JWKS_PATH)


def run(scenario: Callable[[httpx.AsyncClient], Any], **client_options: Any) -> Any:
    """Runs `scenario(http)` in a fresh event loop with a real HTTP client."""

    async def main() -> Any:
        async with httpx.AsyncClient(trust_env=False, timeout=5.0, **client_options) as http:
            return await scenario(http)

    return asyncio.run(main())


async def settled(cache: JwksCache) -> None:
    """Waits (boundedly) for a background refresh to finish."""
    for _ in range(500):
        if cache._inflight is None:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the background refresh did not finish in 5 s")


def public_numbers(key: Any) -> Any:
    return key.public_numbers()


def same_key(key: Any, signing_key: Any) -> bool:
    return public_numbers(key) == signing_key.private_key.public_key().public_numbers()


def test_jwks_cache_fetches_once_for_concurrent_requests_naming_new_kid(key_server, signing_keys):
    async def scenario(http: httpx.AsyncClient) -> list[Any]:
        cache = JwksCache(issuer_config(key_server), http, NO_COOLDOWN)
        await cache.get_key("key-0", "RS256")
        key_server.issuer.keys.append(signing_keys[1])
        return await asyncio.gather(*(cache.get_key("key-1", "RS256") for _ in range(25)))

    keys = run(scenario)

    assert key_server.jwks_fetches == 2
    assert all(same_key(key, signing_keys[1]) for key in keys)


def test_jwks_cache_fetches_once_for_concurrent_requests_on_cold_cache(key_server, signing_keys):
    async def scenario(http: httpx.AsyncClient) -> list[Any]:
        cache = JwksCache(issuer_config(key_server), http, NO_COOLDOWN)
        return await asyncio.gather(*(cache.get_key("key-0", "RS256") for _ in range(25)))

    keys = run(scenario)

    assert key_server.jwks_fetches == 1
    assert all(same_key(key, signing_keys[0]) for key in keys)


def test_jwks_cache_shares_failed_fetch_among_concurrent_requests(key_server):
    key_server.fail_with(500)

    async def scenario(http: httpx.AsyncClient) -> list[Any]:
        cache = JwksCache(issuer_config(key_server), http, NO_COOLDOWN)
        calls = (cache.get_key("key-0", "RS256") for _ in range(10))
        return await asyncio.gather(*calls, return_exceptions=True)

    outcomes = run(scenario)

    assert key_server.jwks_fetches == 1
    assert all(isinstance(outcome, KeySourceUnavailable) for outcome in outcomes)


def test_jwks_cache_limits_refreshes_for_unknown_kids_to_budget_per_minute(key_server):
    clock = FakeClock()

    async def scenario(http: httpx.AsyncClient) -> None:
        cache = JwksCache(issuer_config(key_server), http, NO_COOLDOWN, clock=clock)
        await cache.get_key("key-0", "RS256")
        for _ in range(30):
            with pytest.raises(InvalidToken) as refused:
                await cache.get_key(secrets.token_hex(8), "RS256")
            assert refused.value.description == "unknown key id"
            await cache.get_key("key-0", "RS256")  # the known key keeps working
        assert key_server.jwks_fetches == 5

        clock.advance(59.0)
        with pytest.raises(InvalidToken):
            await cache.get_key("made-up", "RS256")
        assert key_server.jwks_fetches == 5

        clock.advance(1.0)  # the first minute is over: the budget is back
        with pytest.raises(InvalidToken):
            await cache.get_key("made-up", "RS256")  # not refreshed for before: worth a fetch
        assert key_server.jwks_fetches == 6

    run(scenario)


def test_jwks_cache_uses_refresh_budget_to_find_rotated_key_after_flood(key_server, signing_keys):
    clock = FakeClock()

    async def scenario(http: httpx.AsyncClient) -> None:
        cache = JwksCache(issuer_config(key_server), http, NO_COOLDOWN, clock=clock)
        await cache.get_key("key-0", "RS256")
        for _ in range(10):
            with pytest.raises(InvalidToken):
                await cache.get_key(secrets.token_hex(8), "RS256")
        key_server.issuer.keys.append(signing_keys[1])
        with pytest.raises(InvalidToken):  # the budget is spent: no fetch
            await cache.get_key("key-1", "RS256")
        clock.advance(60.0)
        assert same_key(await cache.get_key("key-1", "RS256"), signing_keys[1])

    run(scenario)
    assert key_server.jwks_fetches == 6


def test_jwks_cache_serves_known_kid_without_waiting_for_refresh_in_flight(key_server):
    release = threading.Event()

    def slow_jwks(handler: BaseHTTPRequestHandler) -> None:
        release.wait(5.0)
        send(handler, 200, json.dumps(key_server.issuer.jwks()).encode())

    async def scenario(http: httpx.AsyncClient) -> None:
        cache = JwksCache(issuer_config(key_server), http, NO_COOLDOWN)
        await cache.get_key("key-0", "RS256")
        key_server.behaviour = slow_jwks
        try:
            pending = asyncio.ensure_future(cache.get_key("made-up", "RS256"))
            for _ in range(500):  # until the refresh has reached the key server (5 s at most)
                if key_server.jwks_fetches >= 2:
                    break
                await asyncio.sleep(0.01)
            assert key_server.jwks_fetches >= 2
            started_at = time.monotonic()
            await asyncio.wait_for(cache.get_key("key-0", "RS256"), timeout=0.5)
            assert time.monotonic() - started_at < 0.5
            assert not pending.done()
        finally:
            release.set()
        with pytest.raises(InvalidToken) as refused:
            await pending
        assert refused.value.description == "unknown key id"

    run(scenario)


def test_jwks_cache_refreshes_keys_older_than_ttl(key_server):
    clock = FakeClock()

    async def scenario(http: httpx.AsyncClient) -> None:
        cache = JwksCache(issuer_config(key_server), http, NO_COOLDOWN, clock=clock)
        await cache.get_key("key-0", "RS256")
        clock.advance(599.0)
        await cache.get_key("key-0", "RS256")
        assert key_server.jwks_fetches == 1
        clock.advance(1.0)
        await cache.get_key("key-0", "RS256")  # answered at once from the keys it has...
        await settled(cache)  # ...while they are refreshed in the background
        assert key_server.jwks_fetches == 2

    run(scenario)


@pytest.mark.parametrize("how", ["500", "stopped"])
def test_jwks_cache_keeps_stale_keys_when_refresh_fails(key_server, signing_keys, how):
    clock = FakeClock()

    async def scenario(http: httpx.AsyncClient) -> JwksCache:
        cache = JwksCache(issuer_config(key_server), http, NO_COOLDOWN, clock=clock)
        await cache.get_key("key-0", "RS256")
        take_down(key_server, how)
        clock.advance(601.0)
        for _ in range(20):
            assert same_key(await cache.get_key("key-0", "RS256"), signing_keys[0])
        await settled(cache)
        return cache

    cache = run(scenario)

    assert cache.fetches <= 1 + 5  # the failing key server is not hammered either
    assert cache.state().key_count == 1
    assert cache.state().last_error is not None


def test_jwks_cache_stops_retrying_cold_fetches_beyond_budget(key_server, signing_keys):
    clock = FakeClock()
    key_server.fail_with(500)

    async def scenario(http: httpx.AsyncClient) -> None:
        cache = JwksCache(issuer_config(key_server), http, NO_COOLDOWN, clock=clock)
        for _ in range(12):
            with pytest.raises(KeySourceUnavailable):
                await cache.get_key("key-0", "RS256")
        assert key_server.jwks_fetches == 5
        key_server.recover()
        with pytest.raises(KeySourceUnavailable):
            await cache.get_key("key-0", "RS256")
        clock.advance(60.0)
        assert same_key(await cache.get_key("key-0", "RS256"), signing_keys[0])
        assert cache.state().last_error is None

    run(scenario)
    assert key_server.jwks_fetches == 6


def test_jwks_cache_does_not_follow_redirect_even_if_client_would(key_server, other_server):
    key_server.behaviour = redirect_to(other_server.base_url + JWKS_PATH)

    async def scenario(http: httpx.AsyncClient) -> None:
        cache = JwksCache(issuer_config(key_server), http, NO_COOLDOWN)
        with pytest.raises(KeySourceUnavailable):
            await cache.get_key("key-0", "RS256")

    run(scenario, follow_redirects=True)
    assert other_server.requests == []


@pytest.mark.parametrize("content_length", [True, False], ids=["with-length", "streamed"])
def test_jwks_cache_refuses_key_set_larger_than_max_bytes(key_server, content_length):
    key_server.behaviour = padded_jwks(key_server, 1024 * 1024, content_length=content_length)

    async def scenario(http: httpx.AsyncClient) -> JwksCache:
        cache = JwksCache(issuer_config(key_server), http, CachePolicy(max_bytes=16 * 1024))
        with pytest.raises(KeySourceUnavailable):
            await cache.get_key("key-0", "RS256")
        return cache

    cache = run(scenario)
    assert cache.state().key_count == 0
    assert "more than 16384 bytes" in (cache.state().last_error or "")


def test_jwks_cache_refuses_compressed_key_set(key_server):
    # A compressed body could expand far past max_bytes before the cap sees it: never decoded.
    body = gzip.compress(json.dumps(key_server.issuer.jwks()).encode())
    key_server.behaviour = lambda handler: send(
        handler, 200, body, {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    )

    async def scenario(http: httpx.AsyncClient) -> JwksCache:
        cache = JwksCache(issuer_config(key_server), http, NO_COOLDOWN)
        with pytest.raises(KeySourceUnavailable):
            await cache.get_key("key-0", "RS256")
        return cache

    assert "compressed" in (run(scenario).state().last_error or "")
    assert key_server.requests


def test_jwks_cache_accepts_key_set_within_max_bytes(key_server, signing_keys):
    key_server.behaviour = padded_jwks(key_server, 8 * 1024)

    async def scenario(http: httpx.AsyncClient) -> Any:
        cache = JwksCache(issuer_config(key_server), http, CachePolicy(max_bytes=16 * 1024))
        return await cache.get_key("key-0", "RS256")

    assert same_key(run(scenario), signing_keys[0])


@pytest.mark.parametrize(
    "body",
    [
        b"<html><body>It works!</body></html>",
        b"",
        b'{"keys": ',
        b"[]",
        b'{"keys": {}}',
        b'{"keys": [{"kty": "RSA", "use": "enc", "kid": "key-0", "n": "AQAB", "e": "AQAB"}]}',
        b'{"keys": [{"kty": "RSA", "kid": "key-0", "n": 1, "e": true}, "junk", null]}',
        b'{"keys": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
    ],
    ids=[
        "html",
        "empty",
        "truncated",
        "array",
        "keys-not-array",
        "encryption-keys-only",
        "unusable-keys-only",
        "deeply-nested",
    ],
)
def test_jwks_cache_refuses_key_set_without_usable_signing_key(key_server, body):
    key_server.behaviour = raw_body(body)

    async def scenario(http: httpx.AsyncClient) -> JwksCache:
        cache = JwksCache(issuer_config(key_server), http, NO_COOLDOWN)
        with pytest.raises(KeySourceUnavailable):
            await cache.get_key("key-0", "RS256")
        return cache

    cache = run(scenario)
    assert cache.state().key_count == 0
    assert cache.state().last_error


def test_jwks_cache_refuses_symmetric_key_published_under_kid(key_server):
    document = {"keys": [{"kty": "oct", "kid": "shared", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQ"}]}
    key_server.behaviour = raw_body(json.dumps(document).encode())

    async def scenario(http: httpx.AsyncClient) -> None:
        cache = JwksCache(issuer_config(key_server), http, NO_COOLDOWN)
        with pytest.raises(InvalidToken) as refused:
            await cache.get_key("shared", "RS256")
        assert refused.value.description == "algorithm not allowed"

    run(scenario)


def test_jwks_cache_refuses_key_published_for_another_algorithm(key_server):
    jwk = {**key_server.issuer.jwks()["keys"][0], "alg": "RS512"}
    key_server.behaviour = raw_body(json.dumps({"keys": [jwk]}).encode())

    async def scenario(http: httpx.AsyncClient) -> None:
        cache = JwksCache(issuer_config(key_server), http, NO_COOLDOWN)
        with pytest.raises(InvalidToken) as refused:
            await cache.get_key("key-0", "RS256")
        assert refused.value.description == "algorithm not allowed"

    run(scenario)
