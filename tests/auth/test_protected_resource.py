"""RFC 9728 protected-resource metadata at /.well-known/oauth-protected-resource, the
`resource_metadata` that every 401 and 403 challenge points at, and what /readyz says about each
issuer's keys: before the first fetch, after it, and while the key server is down."""

import re
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from timesheets.app import create_app
from timesheets.routes import OPERATIONS

from ..conftest import AUDIENCE, ENTRY, bearer

METADATA_PATH = "/.well-known/oauth-protected-resource"


def challenge_params(header: str) -> dict[str, str]:
    assert header.startswith("Bearer "), header
    return dict(re.findall(r'([a-z_]+)="([^"]*)"', header))


def key_sources(client: TestClient) -> list[dict[str, Any]]:
    response = client.get("/readyz")
    assert response.status_code == 200, response.text
    return response.json()["key_sources"]


# --- the metadata -------------------------------------------------------------------------------


def test_get_protected_resource_metadata_describes_api_without_token(client, settings):
    response = client.get(METADATA_PATH)

    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    metadata = response.json()
    assert metadata["resource"] == "http://testserver"
    assert metadata["authorization_servers"] == list(settings.issuer)
    assert metadata["bearer_methods_supported"] == ["header"]
    assert metadata["scopes_supported"] == sorted({op.scope for op in OPERATIONS if op.scope})
    assert {"read:timesheets", "create:timesheets", "approve:timesheets"} <= set(
        metadata["scopes_supported"]
    )
    assert metadata["resource_signing_alg_values_supported"] == ["RS256"]


def test_get_protected_resource_metadata_names_resource_of_base_url(settings):
    with TestClient(
        create_app(settings, prefetch_keys=False), base_url="https://timesheets.example.com"
    ) as client:
        metadata = client.get(METADATA_PATH).json()
        header = client.get("/timesheets").headers["WWW-Authenticate"]

    assert metadata["resource"] == "https://timesheets.example.com"
    # RFC 9728 section 3: the metadata URL is the resource with the well-known path inserted.
    assert challenge_params(header)["resource_metadata"] == (
        "https://timesheets.example.com" + METADATA_PATH
    )


def test_get_protected_resource_metadata_lists_every_configured_issuer(settings):
    issuers = (settings.issuer[0], "https://tenant.eu.auth0.com/")
    several = settings.model_copy(update={"issuer": issuers, "jwks_uri": None})
    with TestClient(create_app(several, prefetch_keys=False)) as client:
        metadata = client.get(METADATA_PATH).json()

    assert metadata["authorization_servers"] == list(issuers)


def test_get_protected_resource_metadata_makes_no_key_fetch(client, key_server):
    assert client.get(METADATA_PATH).status_code == 200
    assert key_server.requests == []


# --- every challenge points at it ---------------------------------------------------------------


@pytest.fixture
def challenges(client, make_token) -> Iterator[list[tuple[str, Any]]]:
    """One 401 or 403 of each kind, on several routes."""
    wrong_audience = make_token(extra_claims={"aud": "https://api.exampleco.com/payroll"})
    responses = [
        ("no token", client.get("/timesheets")),
        ("other scheme", client.get("/timesheets", headers={"Authorization": "Basic YTpi"})),
        ("malformed", client.get("/timesheets", headers=bearer("not-a-jwt.x"))),
        ("expired", client.get("/timesheets", headers=bearer(make_token(lifetime=-600)))),
        ("wrong audience", client.post("/timesheets", json=ENTRY, headers=bearer(wrong_audience))),
        (
            "missing scope",
            client.get("/timesheets", headers=bearer(make_token(scopes=("create:timesheets",)))),
        ),
        (
            "missing read scope for one entry",
            client.get("/timesheets/1", headers=bearer(make_token(scopes=()))),
        ),
    ]
    yield responses


def test_challenge_points_at_resource_metadata_for_every_401_and_403(client, challenges):
    statuses = set()
    for name, response in challenges:
        statuses.add(response.status_code)
        assert response.status_code in (401, 403), (name, response.status_code)
        params = challenge_params(response.headers["WWW-Authenticate"])
        url = params["resource_metadata"]
        assert url == "http://testserver" + METADATA_PATH, name
        assert list(params)[-1] == "resource_metadata"  # after the RFC 6750 parameters
        followed = client.get(url)
        assert followed.status_code == 200
        assert followed.json()["resource"] == "http://testserver"
    assert statuses == {401, 403}


# --- /readyz ------------------------------------------------------------------------------------


def test_readyz_reports_key_source_before_first_fetch(client, settings, key_server):
    (source,) = key_sources(client)

    assert source == {
        "issuer": settings.issuer[0],
        "jwks_uri": settings.jwks_uri,
        "key_count": 0,
        "age_seconds": None,
        "fresh": False,
        "usable": False,
        "fetches": 0,
        "last_error": None,
    }
    assert key_server.requests == []  # /readyz itself fetches nothing


def test_readyz_reports_fresh_keys_after_fetch(client, make_token, key_server, signing_keys):
    key_server.issuer.keys.append(signing_keys[1])
    assert client.get("/timesheets", headers=bearer(make_token())).status_code == 200

    (source,) = key_sources(client)

    assert source["key_count"] == 2
    assert 0 <= source["age_seconds"] < 5
    assert (source["fresh"], source["usable"]) == (True, True)
    assert source["fetches"] == 1
    assert source["last_error"] is None
    assert key_server.jwks_fetches == 1


def test_readyz_reports_last_error_and_usable_stale_keys_while_key_server_down(
    client, make_token, key_server
):
    assert client.get("/timesheets", headers=bearer(make_token())).status_code == 200
    key_server.fail_with(500)
    # A new key id makes the cache ask the key server, which fails.
    new_kid = make_token(headers={"kid": "key-new"})
    assert client.get("/timesheets", headers=bearer(new_kid)).status_code == 503

    (source,) = key_sources(client)

    assert source["key_count"] == 1  # the good keys are kept
    assert source["usable"] is True
    assert source["fetches"] == 2
    assert "500" in source["last_error"]

    key_server.recover()
    assert client.get("/timesheets", headers=bearer(new_kid)).status_code == 401
    (source,) = key_sources(client)
    assert source["last_error"] is None
    assert source["fetches"] == 3


def test_readyz_reports_unusable_key_source_when_key_server_down_from_start(
    client, make_token, key_server
):
    key_server.stop()
    assert client.get("/timesheets", headers=bearer(make_token())).status_code == 503

    (source,) = key_sources(client)

    assert (source["key_count"], source["age_seconds"]) == (0, None)
    assert (source["fresh"], source["usable"]) == (False, False)
    assert source["fetches"] == 1
    assert "ConnectError" in source["last_error"]


def test_readyz_reports_each_issuer(settings, key_server):
    second = "https://tenant.eu.auth0.com/"
    several = settings.model_copy(
        update={"issuer": (settings.issuer[0], second), "jwks_uri": None, "audience": (AUDIENCE,)}
    )
    with TestClient(create_app(several, prefetch_keys=False)) as client:
        sources = key_sources(client)

    assert [source["issuer"] for source in sources] == [settings.issuer[0], second]
    assert all(source["jwks_uri"] is None for source in sources)  # not discovered yet
    assert all(source["fetches"] == 0 for source in sources)
