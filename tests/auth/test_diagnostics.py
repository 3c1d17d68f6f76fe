"""Every rejection is classified for the operator and terse for the client.

One test per diagnostic class: the log record on "timesheets.auth" carries the class (`reason`) and
what an operator needs to fix it (expected against received, by how many seconds, a hint), and the
response carries nothing but the fixed vocabulary: no expected or received value, no seconds, no
hint, no library text. Also the rejection counter, and the RFC 9068 access-token profile."""

import base64
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any

import jwt
import pytest
from starlette.testclient import TestClient

from timesheets.app import create_app
from timesheets.auth.errors import DESCRIPTIONS

from ..conftest import AUDIENCE, EMAIL_CLAIM, EMPLOYEE, bearer, challenge

MESSAGE = "Missing or invalid token"
# Attributes every LogRecord has; anything else on a record came as `extra`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message"}
_RECORD_FIELDS = {"event", "reason", "status", "method", "path"}
_CHALLENGE_PARAMS = {"realm", "error", "error_description", "scope", "resource_metadata"}


# --- helpers -----------------------------------------------------------------------------------


@pytest.fixture
def rejections(caplog: pytest.LogCaptureFixture) -> Callable[[], list[logging.LogRecord]]:
    caplog.set_level(logging.INFO, logger="timesheets.auth")

    def records() -> list[logging.LogRecord]:
        return [
            record
            for record in caplog.records
            if record.name == "timesheets.auth"
            and getattr(record, "event", None) == "token_rejected"
        ]

    return records


def details(record: logging.LogRecord) -> dict[str, Any]:
    """The diagnosis of a rejection: the record's extra fields beyond the common ones."""
    return {
        name: value
        for name, value in vars(record).items()
        if name not in _STANDARD and name not in _RECORD_FIELDS
    }


def leaked_texts(value: Any) -> list[str]:
    """The texts of a diagnosis that must not reach the client."""
    if isinstance(value, list | tuple):
        return [text for item in value for text in leaked_texts(item)]
    if isinstance(value, bool) or value is None:
        return []
    return [str(value)] if len(str(value)) >= 3 else []


def challenge_params(header: str) -> dict[str, str]:
    assert header.startswith("Bearer "), header
    return dict(re.findall(r'([a-z_]+)="([^"]*)"', header))


def only_rejection(
    records: Callable[[], list[logging.LogRecord]], reason: str, status: int = 401
) -> logging.LogRecord:
    (record,) = records()
    assert record.levelno == logging.INFO
    assert (record.reason, record.status) == (reason, status)
    assert (record.method, record.path) == ("GET", "/timesheets")
    return record


def assert_terse(response: Any, description: str, record: logging.LogRecord) -> None:
    """The response is the fixed challenge and body for `description`, and nothing of the
    diagnosis in `record` appears in it."""
    assert response.status_code == 401, response.text
    assert description in DESCRIPTIONS
    header = response.headers["WWW-Authenticate"]
    assert header == challenge('error="invalid_token"', f'error_description="{description}"')
    assert response.json() == {"error": "invalid_token", "message": MESSAGE, "detail": description}
    assert_nothing_leaked(response, record)


def assert_nothing_leaked(response: Any, record: logging.LogRecord, *, allowed: str = "") -> None:
    header = response.headers["WWW-Authenticate"]
    assert set(challenge_params(header)) <= _CHALLENGE_PARAMS
    assert not re.search(r"\d", response.text)  # no seconds, no counts
    assert not re.search(r"\d", header)
    for text in leaked_texts(list(details(record).values())):
        if text != allowed:
            assert text not in response.text, text
            assert text not in header, text


def get(client: TestClient, token: str) -> Any:
    return client.get("/timesheets", headers=bearer(token))


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@pytest.fixture
def sign(issuer, signing_keys) -> Callable[..., str]:
    """Signs exactly these claims and header (PyJWT as the issuer's library would): RS256 with the
    issuer's key-0 unless told otherwise."""

    def make(claims: dict[str, Any], algorithm: str = "RS256", **header: Any) -> str:
        return jwt.encode(
            claims,
            signing_keys[0].private_key,
            algorithm=algorithm,
            headers={"kid": signing_keys[0].kid, "typ": "JWT", **header},
        )

    return make


@pytest.fixture
def claims(issuer) -> Callable[..., dict[str, Any]]:
    def make(**changes: Any) -> dict[str, Any]:
        now = int(time.time())
        base = {
            "iss": issuer.issuer,
            "sub": "auth0|ann",
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + 3600,
            "scope": " ".join(EMPLOYEE),
            EMAIL_CLAIM: "ann@example.com",
        }
        return {**base, **changes}

    return make


# --- one test per diagnostic class -------------------------------------------------------------


def test_get_timesheets_logs_expired_token_with_seconds_since_expiry(
    client, make_token, rejections
):
    response = get(client, make_token(lifetime=-120))

    record = only_rejection(rejections, "expired")
    assert 119 <= record.by_seconds <= 122
    assert_terse(response, "token expired", record)


def test_get_timesheets_logs_token_not_yet_valid_with_seconds_and_clock_hint(
    client, make_token, rejections
):
    response = get(client, make_token(extra_claims={"nbf": int(time.time()) + 600}))

    record = only_rejection(rejections, "not_yet_valid")
    assert 598 <= record.by_seconds <= 601
    assert "clock" in record.hint
    assert_terse(response, "token not yet valid", record)


def test_get_timesheets_logs_token_issued_in_future_with_seconds_and_clock_hint(
    client, make_token, rejections
):
    response = get(client, make_token(extra_claims={"iat": int(time.time()) + 600}))

    record = only_rejection(rejections, "issued_in_future")
    assert 598 <= record.by_seconds <= 601
    assert "clock" in record.hint
    assert_terse(response, "token issued in the future", record)


def test_get_timesheets_logs_issuer_mismatch_with_expected_and_received(
    client, make_token, issuer, key_server, rejections
):
    response = get(client, make_token(extra_claims={"iss": "https://evil.example/"}))

    record = only_rejection(rejections, "issuer_mismatch")
    assert record.expected == [issuer.issuer]
    assert record.received == "https://evil.example/"
    assert not hasattr(record, "hint")
    assert_terse(response, "issuer mismatch", record)
    assert key_server.jwks_fetches == 0  # refused before any key was looked up


def test_get_timesheets_logs_trailing_slash_hint_for_issuer_differing_only_by_slash(
    client, make_token, issuer, rejections
):
    received = issuer.issuer.rstrip("/")
    response = get(client, make_token(extra_claims={"iss": received}))

    record = only_rejection(rejections, "issuer_mismatch")
    assert (record.expected, record.received) == ([issuer.issuer], received)
    assert "trailing slash" in record.hint
    assert_terse(response, "issuer mismatch", record)


def test_get_timesheets_logs_audience_mismatch_with_expected_and_received(
    client, make_token, rejections
):
    other = "https://api.exampleco.com/payroll"
    response = get(client, make_token(extra_claims={"aud": other}))

    record = only_rejection(rejections, "audience_mismatch")
    assert (record.expected, record.received) == ([AUDIENCE], [other])
    assert_terse(response, "audience mismatch", record)


def test_get_timesheets_logs_unknown_kid_after_refresh(client, make_token, key_server, rejections):
    assert get(client, make_token()).status_code == 200

    response = get(client, make_token(headers={"kid": "retired-2019"}))

    record = only_rejection(rejections, "unknown_kid")
    assert record.kid == "retired-2019"
    assert record.after_refresh is True
    assert key_server.jwks_fetches == 2
    assert_terse(response, "unknown key id", record)


def test_get_timesheets_logs_encrypted_token_with_audience_hint(client, key_server, rejections):
    header = b64url(json.dumps({"alg": "RSA-OAEP", "enc": "A256GCM"}).encode())
    jwe = ".".join([header, b64url(b"k" * 32), b64url(b"iv"), b64url(b"c" * 40), b64url(b"tag")])

    response = get(client, jwe)

    record = only_rejection(rejections, "encrypted")
    assert "audience" in record.hint
    assert_terse(response, "encrypted tokens are not accepted", record)
    assert key_server.jwks_fetches == 0


def test_get_timesheets_logs_opaque_token_with_audience_hint(client, key_server, rejections):
    response = get(client, secrets.token_hex(16))  # what Auth0 sends when no audience is asked

    record = only_rejection(rejections, "opaque")
    assert "request the token with this API's identifier as audience" in record.hint
    assert_terse(response, "malformed token", record)
    assert key_server.jwks_fetches == 0


def test_get_timesheets_refuses_id_token_as_not_an_access_token(client, sign, claims, rejections):
    id_token = claims(aud="spa-client-id", nonce="n-0S6_WzA2Mj", auth_time=int(time.time()) - 5)
    del id_token["scope"]

    response = get(client, sign(id_token))

    record = only_rejection(rejections, "id_token")
    assert record.received_audience == ["spa-client-id"]
    assert "ID token" in record.hint
    assert_terse(response, "not an access token", record)


def test_get_timesheets_logs_disallowed_algorithm_with_received_and_allowed(
    client, sign, claims, key_server, rejections
):
    response = get(client, sign(claims(), algorithm="RS512"))

    record = only_rejection(rejections, "disallowed_algorithm")
    assert (record.received, record.allowed) == ("RS512", ["RS256"])
    assert_terse(response, "algorithm not allowed", record)
    assert key_server.jwks_fetches == 0


@pytest.mark.parametrize(
    ("token", "field", "value"),
    [
        ("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbm4ifQ", "segments", 2),
        ("bm90IGpzb24.bm90IGpzb24.c2ln", "field", "json"),
    ],
    ids=["two-segments", "not-json"],
)
def test_get_timesheets_logs_malformed_token(client, key_server, rejections, token, field, value):
    response = get(client, token)

    record = only_rejection(rejections, "malformed")
    assert getattr(record, field) == value
    assert_terse(response, "malformed token", record)
    assert key_server.jwks_fetches == 0


def test_get_timesheets_logs_key_reference_header(client, sign, claims, key_server, rejections):
    token = sign(claims(), jku="http://127.0.0.1:9/attacker-jwks.json")

    response = get(client, token)

    record = only_rejection(rejections, "key_reference")
    assert record.headers == ["jku"]
    assert_terse(response, "key reference in token header not allowed", record)
    assert key_server.jwks_fetches == 0


def test_get_timesheets_logs_missing_scope_with_required_scope(client, make_token, rejections):
    response = get(client, make_token(scopes=("create:timesheets",)))

    record = only_rejection(rejections, "insufficient_scope", status=403)
    assert record.required == "read:timesheets"
    assert response.status_code == 403
    assert response.json() == {"error": "insufficient_scope", "message": "Forbidden"}
    assert response.headers["WWW-Authenticate"] == challenge(
        'error="insufficient_scope"', 'scope="read:timesheets"'
    )
    assert_nothing_leaked(response, record, allowed="read:timesheets")  # RFC 6750 names it


def test_get_timesheets_logs_key_source_outage_as_503_without_challenge(
    client, make_token, key_server, rejections
):
    key_server.fail_with(500)

    response = get(client, make_token())

    record = only_rejection(rejections, "temporarily_unavailable", status=503)
    assert response.status_code == 503
    assert response.headers["Retry-After"].isdigit()
    assert "WWW-Authenticate" not in response.headers
    assert set(response.json()) == {"error", "message"}
    assert str(key_server.port) not in response.text
    assert key_server.base_url not in response.text
    assert record.reason == "temporarily_unavailable"


def test_get_timesheets_logs_no_diagnosis_beyond_reason_for_missing_token(client, rejections):
    response = client.get("/timesheets")

    record = only_rejection(rejections, "missing_token")
    assert details(record) == {}
    assert response.headers["WWW-Authenticate"] == challenge()


# --- the counter -------------------------------------------------------------------------------


def rejection_counts(client: TestClient) -> dict[str, float]:
    """The token-rejection metric, by reason (as /metrics would expose it)."""
    registry = client.app.state.telemetry.registry
    return {
        sample.labels["reason"]: sample.value
        for metric in registry.collect()
        if metric.name == "timesheets_token_rejections"
        for sample in metric.samples
        if sample.name == "timesheets_token_rejections_total"
    }


def test_get_timesheets_counts_rejections_by_reason(client, make_token, rejections):
    tokens = [
        make_token(lifetime=-120),
        make_token(lifetime=-300),
        make_token(extra_claims={"iss": "https://evil.example/"}),
        "opaque0token0value",
        make_token(),  # accepted: not counted
    ]
    for token in tokens:
        get(client, token)
    client.get("/timesheets")

    assert rejection_counts(client) == {
        "expired": 2,
        "issuer_mismatch": 1,
        "opaque": 1,
        "missing_token": 1,
    }
    assert len(rejections()) == 5


# --- RFC 9068 access tokens --------------------------------------------------------------------


@pytest.fixture
def strict_client(settings) -> Iterator[TestClient]:
    strict = settings.model_copy(update={"require_at_jwt": True})
    with TestClient(create_app(strict, prefetch_keys=False)) as client:
        yield client


def at_jwt_claims(**changes: Any) -> dict[str, Any]:
    return {"client_id": "timesheets-web", "jti": secrets.token_hex(8), **changes}


def test_get_timesheets_accepts_rfc9068_access_token_by_default(client, make_token):
    token = make_token(extra_claims=at_jwt_claims(), headers={"typ": "at+jwt"})
    assert get(client, token).status_code == 200


def test_get_timesheets_accepts_auth0_jwt_type_by_default(client, make_token):
    assert get(client, make_token(extra_claims=at_jwt_claims())).status_code == 200


@pytest.mark.parametrize("typ", ["at+jwt", "application/at+jwt", "AT+JWT"])
def test_get_timesheets_accepts_rfc9068_access_token_when_profile_required(
    strict_client, make_token, typ
):
    token = make_token(extra_claims=at_jwt_claims(), headers={"typ": typ})
    assert get(strict_client, token).status_code == 200


def test_get_timesheets_refuses_plain_jwt_type_when_profile_required(
    strict_client, make_token, rejections
):
    response = get(strict_client, make_token(extra_claims=at_jwt_claims()))

    record = only_rejection(rejections, "not_at_jwt")
    assert record.typ == "JWT"
    assert_terse(response, "unsupported token type", record)


@pytest.mark.parametrize("claim", ["jti", "client_id"])
def test_get_timesheets_refuses_at_jwt_without_required_claim_when_profile_required(
    strict_client, make_token, rejections, claim
):
    claims = at_jwt_claims()
    del claims[claim]

    response = get(strict_client, make_token(extra_claims=claims, headers={"typ": "at+jwt"}))

    record = only_rejection(rejections, "missing_claim")
    assert record.claim == claim
    assert_terse(response, "missing required claim", record)
