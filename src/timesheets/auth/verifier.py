"""Turns a bearer token into a Principal, or says exactly which rule it broke.

The checks run cheapest first, and everything that needs no key runs before any key is looked up, so
that a token which could not be valid never causes a request to the key server.
"""

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

import httpx
import jwt

from .config import AuthConfig
from .errors import InvalidToken
from .jwks import JwksCache, KeySourceState
from .principal import Principal

# RFC 7515 sections 4.1.2-4.1.6: header parameters that name a key. Honouring them would let the
# token choose the key that verifies it, so their presence alone is a rejection; no URL from a token
# is ever fetched.
_KEY_REFERENCE_HEADERS = ("jku", "x5u", "jwk", "x5c")
# RFC 9068 section 2.1 (at+jwt) and the plain JWT type that Auth0 issues.
_ACCEPTED_TYPES = frozenset({"jwt", "at+jwt", "application/at+jwt", "application/jwt"})

_PYJWT_ERRORS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not yet valid"),
    (jwt.InvalidAudienceError, "audience mismatch"),
    (jwt.InvalidIssuerError, "issuer mismatch"),
    (jwt.MissingRequiredClaimError, "missing required claim"),
    (jwt.InvalidSignatureError, "invalid signature"),
    (jwt.DecodeError, "malformed token"),
)


class TokenVerifier:
    def __init__(self, config: AuthConfig, caches: Mapping[str, JwksCache]) -> None:
        self.config = config
        self._caches = caches
        self._audiences = list(config.audiences)

    @classmethod
    def for_config(cls, config: AuthConfig, client: httpx.AsyncClient) -> "TokenVerifier":
        """A verifier with one key cache per configured issuer, all fetching through `client`."""
        caches = {
            entry.issuer: JwksCache(
                entry,
                client,
                ttl_seconds=config.jwks_ttl_seconds,
                refreshes_per_minute=config.jwks_refreshes_per_minute,
                max_bytes=config.jwks_max_bytes,
            )
            for entry in config.issuers
        }
        return cls(config, caches)

    def key_sources(self) -> list[KeySourceState]:
        return [cache.state() for cache in self._caches.values()]

    async def verify(self, token: str) -> Principal:
        """The principal that a valid access token stands for.

        Raises:
            InvalidToken: the token broke a rule; its description says which, from a fixed vocabulary.
            KeySourceUnavailable: the key that would decide could not be fetched.
        """
        self._check_size(token)
        header_segment, payload_segment, _ = self._split(token)
        header = _decode_json_segment(header_segment)
        alg = self._check_header(header)
        issuer = _decode_json_segment(payload_segment).get("iss")
        cache = self._caches.get(issuer) if isinstance(issuer, str) else None
        if cache is None:
            raise InvalidToken("issuer mismatch")
        key = await cache.get_key(header.get("kid"), alg)
        claims = self._decode(token, key, alg, cache.issuer.issuer)
        return self._principal(claims)

    def _check_size(self, token: str) -> None:
        # Oversized tokens are refused before any parsing (a cheap defence against decode bombs).
        if len(token) > self.config.max_token_bytes:
            raise InvalidToken("token too large")

    @staticmethod
    def _split(token: str) -> tuple[str, str, str]:
        segments = token.split(".")
        if len(segments) == 5:  # RFC 7516 compact JWE: an encrypted token, not a signed one
            raise InvalidToken("encrypted tokens are not accepted")
        if len(segments) != 3 or not all(segments):
            raise InvalidToken("malformed token")
        return segments[0], segments[1], segments[2]

    def _check_header(self, header: dict[str, Any]) -> str:
        alg = header.get("alg")
        # RFC 8725 section 3.1: only the configured asymmetric algorithms, compared exactly, so
        # "none" in any casing and HMAC with a public key as its secret never reach a key.
        if not isinstance(alg, str) or alg not in self.config.algorithms:
            raise InvalidToken("algorithm not allowed")
        if any(name in header for name in _KEY_REFERENCE_HEADERS):
            raise InvalidToken("key reference in token header not allowed")
        # RFC 7515 section 4.1.11: we understand no extension, so any critical one is a rejection.
        if "crit" in header:
            raise InvalidToken("unsupported critical header")
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.lower() not in _ACCEPTED_TYPES):
            raise InvalidToken("unsupported token type")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise InvalidToken("malformed token")
        return alg

    def _decode(self, token: str, key: Any, alg: str, issuer: str) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self._audiences,
                issuer=issuer,
                leeway=self.config.leeway_seconds,
                # PyJWT verifies a claim only if present unless it is required here.
                options={"require": ["exp", "iss", "aud", "sub"], "verify_iat": True},
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(_describe(exc)) from exc
        return claims

    def _principal(self, claims: dict[str, Any]) -> Principal:
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise InvalidToken("invalid claim")
        return Principal.from_claims(claims, email_claim=self.config.email_claim)


def _describe(exc: jwt.PyJWTError) -> str:
    for kind, description in _PYJWT_ERRORS:
        if isinstance(exc, kind):
            return description
    return "invalid claim"


def _decode_json_segment(segment: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError):
        raise InvalidToken("malformed token") from None
    if not isinstance(value, dict):
        raise InvalidToken("malformed token")
    return value
