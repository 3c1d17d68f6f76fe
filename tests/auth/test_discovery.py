"""Where an issuer's keys are found when TIMESHEETS_JWKS_URI is not set: OpenID Connect discovery,
then RFC 8414 metadata (path-inserted for an issuer with a path), whose `issuer` must be exactly the
configured one, else `{issuer}.well-known/jwks.json`. And several issuers at once, each with its own
key server and cache, none of whose keys verifies another's tokens.

The metadata documents are served by the real loopback key server; every path it was asked for is
checked, so that no key is ever fetched from a place the configuration did not lead to."""

import asyncio
import json
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from timesheets.app import create_app
from timesheets.auth import DevIssuer, IssuerConfig, JwksCache, KeySourceUnavailable, SigningKey
from timesheets.auth.config import CachePolicy
from timesheets.config import ConfigError, Settings, load_settings

from ..conftest import AUDIENCE, EMPLOYEE, bearer, challenge
from ..keyserver import KeyServer
from .test_key_cache import same_key, send

OIDC = "/.well-known/openid-configuration"
RFC8414 = "/.well-known/oauth-authorization-server"
FALLBACK = "/.well-known/jwks.json"
AUDIENCE_B = "https://api.exampleco.com/timesheets-b"
Behaviour = Callable[[BaseHTTPRequestHandler], None]


# --- helpers -----------------------------------------------------------------------------------


def jwks_of(server: KeyServer) -> Behaviour:
    return lambda handler: send(handler, 200, json.dumps(server.issuer.jwks()).encode())


def routes(table: dict[str, Any]) -> Behaviour:
    """Answers each path of `table` (a JSON document, or a behaviour), and 404 to anything else."""

    def behaviour(handler: BaseHTTPRequestHandler) -> None:
        route = table.get(handler.path)
        if route is None:
            send(handler, 404, b'{"error": "not_found"}')
        elif callable(route):
            route(handler)
        else:
            send(handler, 200, json.dumps(route).encode())

    return behaviour


def origin(server: KeyServer) -> str:
    return server.base_url.rstrip("/")


def run(scenario: Callable[[httpx.AsyncClient], Any]) -> Any:
    async def main() -> Any:
        async with httpx.AsyncClient(timeout=5.0, follow_redirects=False, trust_env=False) as http:
            return await scenario(http)

    return asyncio.run(main())


def discovered(issuer: str, *kids: str) -> Callable[[httpx.AsyncClient], Any]:
    """A scenario: a cache for `issuer` without a JWKS URI, asked for `kids` one after another."""

    async def scenario(http: httpx.AsyncClient) -> tuple[JwksCache, list[Any]]:
        cache = JwksCache(IssuerConfig(issuer), http, CachePolicy(cooldown=0))
        keys = [await cache.get_key(kid, "RS256") for kid in kids]
        return cache, keys

    return scenario


@pytest.fixture
def elsewhere(signing_keys) -> Iterator[KeyServer]:
    """A server that publishes the issuer's real key, where wrong metadata would lead."""
    server = KeyServer(DevIssuer("https://elsewhere.example/", [signing_keys[0]]))
    yield server
    server.stop()


# --- one issuer --------------------------------------------------------------------------------


def test_jwks_cache_finds_jwks_uri_in_openid_configuration(key_server, signing_keys):
    issuer = key_server.base_url
    key_server.behaviour = routes(
        {
            OIDC: {"issuer": issuer, "jwks_uri": issuer + "oauth/keys"},
            "/oauth/keys": jwks_of(key_server),
        }
    )

    cache, (key,) = run(discovered(issuer, "key-0"))

    assert same_key(key, signing_keys[0])
    assert key_server.requests == [OIDC, "/oauth/keys"]
    assert cache.state().jwks_uri == issuer + "oauth/keys"


def test_jwks_cache_keeps_discovered_jwks_uri_for_later_fetches(key_server, signing_keys):
    issuer = key_server.base_url
    key_server.behaviour = routes(
        {
            OIDC: {"issuer": issuer, "jwks_uri": issuer + "oauth/keys"},
            "/oauth/keys": jwks_of(key_server),
        }
    )

    async def scenario(http: httpx.AsyncClient) -> None:
        cache = JwksCache(IssuerConfig(issuer), http, CachePolicy(cooldown=0))
        await cache.get_key("key-0", "RS256")
        key_server.issuer.keys.append(signing_keys[1])
        assert same_key(await cache.get_key("key-1", "RS256"), signing_keys[1])

    run(scenario)
    assert key_server.requests == [OIDC, "/oauth/keys", "/oauth/keys"]


def test_get_timesheets_accepts_token_with_keys_from_openid_discovery(
    settings, make_token, key_server
):
    issuer = key_server.base_url
    key_server.behaviour = routes(
        {
            OIDC: {"issuer": issuer, "jwks_uri": issuer + "oauth/keys"},
            "/oauth/keys": jwks_of(key_server),
        }
    )
    discovering = settings.model_copy(update={"jwks_uri": None})

    with TestClient(create_app(discovering, prefetch_keys=False)) as client:
        for _ in range(2):
            response = client.get("/timesheets", headers=bearer(make_token()))
            assert response.status_code == 200, response.text
        (state,) = client.get("/readyz").json()["key_sources"]

    assert key_server.requests == [OIDC, "/oauth/keys"]
    assert state["jwks_uri"] == issuer + "oauth/keys"


def test_jwks_cache_falls_back_to_rfc8414_metadata_inserted_before_issuer_path(
    key_server, signing_keys
):
    issuer = key_server.base_url + "tenants/acme"
    key_server.behaviour = routes(
        {
            RFC8414 + "/tenants/acme": {"issuer": issuer, "jwks_uri": issuer + "/keys"},
            "/tenants/acme/keys": jwks_of(key_server),
        }
    )

    cache, (key,) = run(discovered(issuer, "key-0"))

    assert same_key(key, signing_keys[0])
    assert key_server.requests == [
        "/tenants/acme" + OIDC,  # OpenID Connect appends to the issuer's path: 404 here
        RFC8414 + "/tenants/acme",  # RFC 8414 section 3.1 inserts before it
        "/tenants/acme/keys",
    ]
    assert cache.state().jwks_uri == issuer + "/keys"


def test_jwks_cache_reads_rfc8414_metadata_of_issuer_with_trailing_slash(key_server, signing_keys):
    issuer = key_server.base_url + "tenants/acme/"
    key_server.behaviour = routes(
        {
            RFC8414 + "/tenants/acme": {"issuer": issuer, "jwks_uri": issuer + "keys"},
            "/tenants/acme/keys": jwks_of(key_server),
        }
    )

    _, (key,) = run(discovered(issuer, "key-0"))

    assert same_key(key, signing_keys[0])
    assert key_server.requests == [
        "/tenants/acme" + OIDC,
        RFC8414 + "/tenants/acme",
        "/tenants/acme/keys",
    ]


@pytest.mark.parametrize(
    "claimed",
    [
        "https://evil.example/",
        "trailing-slash-dropped",
        None,
    ],
    ids=["other-issuer", "without-trailing-slash", "no-issuer"],
)
def test_jwks_cache_ignores_metadata_describing_another_issuer(
    key_server, elsewhere, signing_keys, claimed
):
    issuer = key_server.base_url
    if claimed == "trailing-slash-dropped":
        claimed = issuer.rstrip("/")
    lure = {"jwks_uri": elsewhere.base_url + "lure/jwks.json"}
    if claimed is not None:
        lure["issuer"] = claimed
    key_server.behaviour = routes({OIDC: lure, RFC8414: lure, FALLBACK: jwks_of(key_server)})

    cache, (key,) = run(discovered(issuer, "key-0"))

    assert same_key(key, signing_keys[0])
    assert key_server.requests == [OIDC, RFC8414, FALLBACK]
    assert elsewhere.requests == []  # no key from the wrong place
    assert cache.state().key_count == 1


def test_jwks_cache_answers_unavailable_when_only_metadata_of_another_issuer_exists(
    key_server, elsewhere
):
    lure = {"issuer": "https://evil.example/", "jwks_uri": elsewhere.base_url + "jwks.json"}
    key_server.behaviour = routes({OIDC: lure, RFC8414: lure})

    async def scenario(http: httpx.AsyncClient) -> JwksCache:
        cache = JwksCache(IssuerConfig(key_server.base_url), http, CachePolicy(cooldown=0))
        with pytest.raises(KeySourceUnavailable):
            await cache.get_key("key-0", "RS256")
        return cache

    cache = run(scenario)

    assert key_server.requests == [OIDC, RFC8414, FALLBACK]
    assert elsewhere.requests == []
    assert cache.state().key_count == 0
    assert "404" in (cache.state().last_error or "")


@pytest.mark.parametrize(
    "jwks_uri",
    [
        "http://keys.example.com/jwks.json",
        "ftp://127.0.0.1/jwks.json",
        "/.well-known/jwks.json",
        "https://[::1/jwks.json",
        "http://127.0.0.1:99999/jwks.json",
        42,
        None,
    ],
    ids=[
        "http-not-loopback",
        "ftp",
        "relative",
        "malformed-ipv6",
        "port-out-of-range",
        "not-a-string",
        "missing",
    ],
)
def test_jwks_cache_refuses_unusable_jwks_uri_in_metadata_and_falls_back(
    key_server, signing_keys, jwks_uri
):
    issuer = key_server.base_url
    document = {"issuer": issuer, "jwks_uri": jwks_uri}
    if jwks_uri is None:
        del document["jwks_uri"]
    key_server.behaviour = routes({OIDC: document, FALLBACK: jwks_of(key_server)})

    cache, (key,) = run(discovered(issuer, "key-0"))

    assert same_key(key, signing_keys[0])
    assert key_server.requests == [OIDC, RFC8414, FALLBACK]


def test_jwks_cache_falls_back_to_well_known_jwks_without_metadata(key_server, signing_keys):
    key_server.behaviour = routes({FALLBACK: jwks_of(key_server)})

    cache, (key,) = run(discovered(key_server.base_url, "key-0"))

    assert same_key(key, signing_keys[0])
    assert key_server.requests == [OIDC, RFC8414, FALLBACK]
    assert cache.state().last_error is None


def test_jwks_cache_falls_back_to_well_known_jwks_under_issuer_path(key_server, signing_keys):
    issuer = key_server.base_url + "tenants/acme/"
    key_server.behaviour = routes({"/tenants/acme" + FALLBACK: jwks_of(key_server)})

    _, (key,) = run(discovered(issuer, "key-0"))

    assert same_key(key, signing_keys[0])
    assert key_server.requests[-1] == "/tenants/acme" + FALLBACK


# --- several issuers ---------------------------------------------------------------------------


@pytest.fixture
def second_server(signing_keys) -> Iterator[KeyServer]:
    """Issuer B: its own key server, publishing under the same kid as issuer A a different key,
    and a key id that only B has."""
    keys = [
        SigningKey("b-only", signing_keys[2].private_key),
        SigningKey("key-0", signing_keys[1].private_key),  # the newest: signs by default
    ]
    server = KeyServer(DevIssuer("placeholder", keys))
    server.issuer.issuer = server.base_url
    yield server
    server.stop()


def publish_metadata(server: KeyServer) -> None:
    """The server publishes OpenID discovery naming its own key set."""
    issuer = server.base_url
    server.behaviour = routes(
        {
            OIDC: {"issuer": issuer, "jwks_uri": issuer + "oauth/jwks.json"},
            "/oauth/jwks.json": jwks_of(server),
        }
    )


@pytest.fixture
def two_issuers(database_url, key_server, second_server) -> Settings:
    publish_metadata(key_server)
    publish_metadata(second_server)
    return Settings(
        _env_file=None,
        issuer=f"{key_server.base_url}, {second_server.base_url}",
        audience=f"{AUDIENCE},{AUDIENCE_B}",
        database_url=database_url,
        jwks_cooldown_seconds=0,
    )


def mint(server: KeyServer, audience: str = AUDIENCE, **options: Any) -> str:
    return server.issuer.mint(
        audience=audience, subject="auth0|ann", email="ann@example.com", scopes=EMPLOYEE, **options
    )


def test_get_timesheets_accepts_tokens_of_each_configured_issuer(
    two_issuers, key_server, second_server
):
    with TestClient(create_app(two_issuers, prefetch_keys=False)) as client:
        for token in (mint(key_server), mint(second_server, AUDIENCE_B), mint(second_server)):
            response = client.get("/timesheets", headers=bearer(token))
            assert response.status_code == 200, response.text
        sources = client.get("/readyz").json()["key_sources"]

    assert key_server.jwks_fetches == 1
    assert second_server.jwks_fetches == 1
    assert [(s["issuer"], s["jwks_uri"], s["key_count"]) for s in sources] == [
        (key_server.base_url, key_server.base_url + "oauth/jwks.json", 1),
        (second_server.base_url, second_server.base_url + "oauth/jwks.json", 2),
    ]


def test_get_timesheets_rejects_token_naming_one_issuer_signed_with_others_same_kid(
    two_issuers, key_server, second_server, signing_keys
):
    # Claims issuer A, signed with B's key under the kid that A also uses.
    forged = mint(second_server, extra_claims={"iss": key_server.base_url})
    reverse = mint(key_server, extra_claims={"iss": second_server.base_url})

    with TestClient(create_app(two_issuers, prefetch_keys=False)) as client:
        assert client.get("/timesheets", headers=bearer(mint(key_server))).status_code == 200
        assert client.get("/timesheets", headers=bearer(mint(second_server))).status_code == 200
        for token in (forged, reverse):
            response = client.get("/timesheets", headers=bearer(token))
            assert response.status_code == 401, response.text
            assert response.headers["WWW-Authenticate"] == challenge(
                'error="invalid_token"', 'error_description="invalid signature"'
            )

    assert key_server.jwks_fetches == 1
    assert second_server.jwks_fetches == 1


def test_get_timesheets_rejects_token_naming_one_issuer_with_kid_only_other_publishes(
    two_issuers, key_server, second_server, signing_keys
):
    b_only = second_server.issuer.keys[0]
    forged = mint(second_server, key=b_only, extra_claims={"iss": key_server.base_url})

    with TestClient(create_app(two_issuers, prefetch_keys=False)) as client:
        assert (
            client.get("/timesheets", headers=bearer(mint(second_server, key=b_only))).status_code
            == 200
        )
        response = client.get("/timesheets", headers=bearer(forged))

    assert response.status_code == 401, response.text
    assert response.headers["WWW-Authenticate"] == challenge(
        'error="invalid_token"', 'error_description="unknown key id"'
    )
    assert key_server.jwks_fetches == 2  # A looked once more for the kid, in its own key set
    assert second_server.jwks_fetches == 1


def test_load_settings_refuses_jwks_uri_with_several_issuers():
    with pytest.raises(ConfigError) as refused:
        load_settings(
            issuer="https://a.example/,https://b.example/",
            audience=AUDIENCE,
            jwks_uri="https://a.example/.well-known/jwks.json",
        )
    message = str(refused.value)
    assert "TIMESHEETS_JWKS_URI" in message
    assert "TIMESHEETS_ISSUER" in message


def test_load_settings_reads_several_issuers_and_audiences_without_jwks_uri():
    settings = load_settings(
        issuer="https://a.example/, https://b.example/", audience=f"{AUDIENCE}, {AUDIENCE_B}"
    )
    config = settings.auth_config()
    assert [(entry.issuer, entry.jwks_uri) for entry in config.issuers] == [
        ("https://a.example/", None),
        ("https://b.example/", None),
    ]
    assert config.audiences == (AUDIENCE, AUDIENCE_B)
