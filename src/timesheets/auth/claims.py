"""The claim checks of an access token (RFC 7519 section 4.1, RFC 9068 section 2.2), each raising
InvalidToken with a fixed description for the client and a diagnosis for the operator."""

import math
from collections.abc import Collection
from typing import Any

from .errors import InvalidToken

# Claims that only ID tokens carry (OpenID Connect Core sections 2 and 3.1.3.6).
_ID_TOKEN_CLAIMS = ("nonce", "at_hash", "c_hash", "s_hash", "auth_time")
_SCOPE_CLAIMS = ("scope", "scp", "permissions")


def check_times(claims: dict[str, Any], *, now: float, leeway: float) -> None:
    """exp is required; exp, nbf and iat are compared with one leeway for clock skew."""
    expires = _numeric(claims, "exp", required=True)
    assert expires is not None
    if now - leeway >= expires:
        raise InvalidToken("token expired", reason="expired", by_seconds=round(now - expires))
    not_before = _numeric(claims, "nbf")
    if not_before is not None and now + leeway < not_before:
        raise InvalidToken(
            "token not yet valid",
            reason="not_yet_valid",
            by_seconds=round(not_before - now),
            hint="the issuer's clock or this server's is off: check NTP on both",
        )
    issued_at = _numeric(claims, "iat")
    if issued_at is not None and now + leeway < issued_at:
        raise InvalidToken(
            "token issued in the future",
            reason="issued_in_future",
            by_seconds=round(issued_at - now),
            hint="the issuer's clock or this server's is off: check NTP on both",
        )


def check_issuer(received: Any, expected: Collection[str]) -> None:
    if isinstance(received, str) and received in expected:
        return
    details: dict[str, Any] = {"expected": sorted(expected), "received": received}
    if isinstance(received, str) and any(received.rstrip("/") == e.rstrip("/") for e in expected):
        details["hint"] = "only a trailing slash differs: Auth0 issuers end with '/'"
    raise InvalidToken("issuer mismatch", reason="issuer_mismatch", **details)


def check_audience(claims: dict[str, Any], expected: frozenset[str]) -> None:
    """RFC 7519 section 4.1.3: a string, or an array of which one must be ours."""
    audience = claims.get("aud")
    if audience is None:
        raise InvalidToken("missing required claim", reason="missing_claim", claim="aud")
    values = [audience] if isinstance(audience, str) else audience
    if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
        raise InvalidToken("invalid claim", reason="invalid_claim", claim="aud")
    if not expected.isdisjoint(values):
        return
    if looks_like_id_token(claims):
        raise InvalidToken(
            "not an access token",
            reason="id_token",
            received_audience=values,
            hint="an ID token was sent: send the access token requested for this API's audience",
        )
    raise InvalidToken(
        "audience mismatch", reason="audience_mismatch", expected=sorted(expected), received=values
    )


def check_subject(claims: dict[str, Any]) -> None:
    subject = claims.get("sub")
    if subject is None:
        raise InvalidToken("missing required claim", reason="missing_claim", claim="sub")
    if not isinstance(subject, str) or not subject:
        raise InvalidToken("invalid claim", reason="invalid_claim", claim="sub")


def check_access_token_profile(header: dict[str, Any], claims: dict[str, Any]) -> None:
    """RFC 9068 sections 2.1 and 2.2, for deployments that require the strict profile."""
    typ = str(header.get("typ", "")).lower()
    if typ not in ("at+jwt", "application/at+jwt"):
        raise InvalidToken("unsupported token type", reason="not_at_jwt", typ=header.get("typ"))
    for name in ("client_id", "jti", "iat"):
        if name not in claims:
            raise InvalidToken("missing required claim", reason="missing_claim", claim=name)


def looks_like_id_token(claims: dict[str, Any]) -> bool:
    """An OpenID Connect ID token: ID-token-only claims, and no scopes at all."""
    has_scopes = any(name in claims for name in _SCOPE_CLAIMS)
    return not has_scopes and any(name in claims for name in _ID_TOKEN_CLAIMS)


def _numeric(claims: dict[str, Any], name: str, *, required: bool = False) -> float | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise InvalidToken("missing required claim", reason="missing_claim", claim=name)
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidToken("invalid claim", reason="invalid_claim", claim=name)
    return value
