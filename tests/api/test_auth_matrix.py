"""Every endpoint of the contract's table refuses a missing token, a bad token and a missing scope,
each with its RFC 6750 challenge, before it looks at the path or the body."""

import pytest

from timesheets.auth import SigningKey

from ..conftest import bearer, challenge

ALL_SCOPES = (
    "read:timesheets",
    "create:timesheets",
    "delete:timesheets",
    "approve:timesheets",
    "batch:upload",
)
ENDPOINTS = [
    ("POST", "/timesheets", "create:timesheets"),
    ("GET", "/timesheets", "read:timesheets"),
    ("GET", "/timesheets/1", "read:timesheets"),
    ("PATCH", "/timesheets/1", "create:timesheets"),
    ("DELETE", "/timesheets/1", "delete:timesheets"),
    ("POST", "/timesheets/upload", "batch:upload"),
    ("GET", "/approvals", "approve:timesheets"),
    ("PUT", "/approvals/1", "approve:timesheets"),
    ("POST", "/approvals/1/reject", "approve:timesheets"),
]
BODY = b'{"project": "P", "date": "2017-07-10", "hours": 1, "reason": "r"}'
MISSING = {"error": "missing_token", "message": "Missing or invalid token"}

endpoints = pytest.mark.parametrize(
    ("method", "path", "scope"), ENDPOINTS, ids=[f"{m} {p}" for m, p, _ in ENDPOINTS]
)


def _send(client, method: str, path: str, headers: dict[str, str]):
    if method in ("POST", "PUT", "PATCH"):
        headers = {**headers, "Content-Type": "application/json"}
        return client.request(method, path, content=BODY, headers=headers)
    return client.request(method, path, headers=headers)


@endpoints
def test_request_without_token_is_401_without_error_code(client, method, path, scope):
    for headers in ({}, {"Authorization": "Bearer "}):
        response = _send(client, method, path, headers)
        assert response.status_code == 401, headers
        assert response.headers["WWW-Authenticate"] == challenge(), headers
        assert response.json() == MISSING, headers


@pytest.fixture
def bad_tokens(issuer, make_token, signing_keys) -> dict[str, str]:
    """Tokens that must each be refused as invalid, by kind."""
    impostor = SigningKey(issuer.keys[-1].kid, signing_keys[1].private_key)
    return {
        "signed by an unknown key under a known kid": make_token(scopes=ALL_SCOPES, key=impostor),
        "unknown kid": make_token(
            scopes=ALL_SCOPES, key=SigningKey("nobody", signing_keys[2].private_key)
        ),
        "expired": make_token(scopes=ALL_SCOPES, lifetime=-3600),
        "wrong audience": issuer.mint(
            audience="https://elsewhere.example/",
            scopes=ALL_SCOPES,
            email="ann@example.com",
            subject="auth0|ann",
        ),
        "not a JWT": "not-a-jwt",
    }


@endpoints
def test_request_with_bad_token_is_401_invalid_token(client, bad_tokens, method, path, scope):
    for kind, token in bad_tokens.items():
        response = _send(client, method, path, bearer(token))
        assert response.status_code == 401, kind
        challenge = response.headers["WWW-Authenticate"]
        assert challenge.startswith('Bearer realm="timesheets", error="invalid_token"'), kind
        assert 'error_description="' in challenge, kind
        body = response.json()
        assert (body["error"], body["message"]) == ("invalid_token", MISSING["message"]), kind
        assert "Traceback" not in response.text


@endpoints
def test_request_without_required_scope_is_403_insufficient_scope(
    client, make_token, method, path, scope
):
    every_other = tuple(name for name in ALL_SCOPES if name != scope)
    openid_only = ("openid", "profile", "email", "offline_access")
    for scopes in (every_other, openid_only):
        response = _send(client, method, path, bearer(make_token("ann@example.com", scopes)))
        assert response.status_code == 403, scopes
        assert response.json() == {"error": "insufficient_scope", "message": "Forbidden"}
        assert response.headers["WWW-Authenticate"] == (
            challenge('error="insufficient_scope"', f'scope="{scope}"')
        )


@endpoints
def test_request_with_required_scope_passes_auth(client, make_token, method, path, scope):
    response = _send(client, method, path, bearer(make_token("ann@example.com", (scope,))))
    assert response.status_code not in (401, 403), response.text
    assert response.status_code < 500
