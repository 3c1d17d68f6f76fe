"""Turns a bearer token into a Principal, or says exactly which rule it broke.

The checks run cheapest first, and everything that needs no key runs before any key is looked up, so
that a token which could not be valid never causes a request to the key server.
"""

import base64
import binascii
import json
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
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

_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")  # RFC 7515 section 2: base64url without padding
# Clients send the same token for its whole lifetime, so its signature is checked once and the
# outcome remembered; what depends on the time (exp, nbf, iat) is checked again on every use.
_MEMO_SIZE = 4096
_MEMO_MAX_TOKEN = 4096


@dataclass(frozen=True, slots=True)
class _Verified:
    claims: dict[str, Any]
    principal: Principal
    cache: JwksCache
    generation: int  # the key set it was verified with; a refreshed set verifies it afresh

    def still_current(self) -> bool:
        # Keys due for a refresh take the full path, so that a removed key is noticed.
        return self.generation == self.cache.generation and not self.cache.is_expired()


class TokenVerifier:
    def __init__(
        self,
        config: AuthConfig,
        caches: Mapping[str, JwksCache],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._caches = caches
        self._audiences = frozenset(config.audiences)
        self._algorithms = {alg: jwt.get_algorithm_by_name(alg) for alg in config.algorithms}
        self._clock = clock
        self._memo: dict[str, _Verified] = {}

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
        remembered = self._memo.get(token)
        if remembered is not None and remembered.still_current():
            self._check_claims(remembered.claims, remembered.cache.issuer.issuer)
            return remembered.principal
        self._check_size(token)
        segments = self._split(token)
        header = _decode_json(segments[0])
        alg = self._check_header(header)
        claims = _decode_json(segments[1])
        cache = self._cache_for(claims)
        key = await cache.get_key(header.get("kid"), alg)
        self._check_signature(segments, key, alg)
        self._check_claims(claims, cache.issuer.issuer)
        principal = Principal.from_claims(claims, email_claim=self.config.email_claim)
        self._remember(token, _Verified(claims, principal, cache, cache.generation))
        return principal

    def _remember(self, token: str, verified: _Verified) -> None:
        if len(token) > _MEMO_MAX_TOKEN:
            return
        if len(self._memo) >= _MEMO_SIZE:
            del self._memo[next(iter(self._memo))]  # the oldest first: bounded memory
        self._memo[token] = verified

    def _check_size(self, token: str) -> None:
        # Oversized tokens are refused before any parsing (a cheap defence against decode bombs).
        if len(token) > self.config.max_token_bytes:
            raise InvalidToken("token too large")

    @staticmethod
    def _split(token: str) -> list[str]:
        segments = token.split(".")
        if len(segments) == 5:  # RFC 7516 compact JWE: an encrypted token, not a signed one
            raise InvalidToken("encrypted tokens are not accepted")
        if len(segments) != 3 or not all(_SEGMENT.fullmatch(segment) for segment in segments):
            raise InvalidToken("malformed token")
        return segments

    def _check_header(self, header: dict[str, Any]) -> str:
        alg = header.get("alg")
        # RFC 8725 section 3.1: only the configured asymmetric algorithms, compared exactly, so
        # "none" in any casing and HMAC with a public key as its secret never reach a key.
        if not isinstance(alg, str) or alg not in self._algorithms:
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

    def _cache_for(self, claims: dict[str, Any]) -> JwksCache:
        # The unverified `iss` only picks which issuer's keys to try: a token naming an issuer we
        # do not trust is refused before any network request (the signature still decides).
        issuer = claims.get("iss")
        cache = self._caches.get(issuer) if isinstance(issuer, str) else None
        if cache is None:
            raise InvalidToken("issuer mismatch")
        return cache

    def _check_signature(self, segments: list[str], key: Any, alg: str) -> None:
        signing_input = f"{segments[0]}.{segments[1]}".encode("ascii")
        signature = _b64decode(segments[2])
        try:
            valid = self._algorithms[alg].verify(signing_input, key, signature)
        except (ValueError, TypeError, jwt.PyJWTError):
            valid = False
        if not valid:
            raise InvalidToken("invalid signature")

    def _check_claims(self, claims: dict[str, Any], issuer: str) -> None:
        """RFC 7519 section 4.1, with one leeway for clock skew on exp, nbf and iat."""
        now, leeway = self._clock(), self.config.leeway_seconds
        expires = _numeric_claim(claims, "exp", required=True)
        if expires is not None and now - leeway >= expires:
            raise InvalidToken("token expired")
        not_before = _numeric_claim(claims, "nbf")
        if not_before is not None and now + leeway < not_before:
            raise InvalidToken("token not yet valid")
        issued_at = _numeric_claim(claims, "iat")
        if issued_at is not None and now + leeway < issued_at:
            raise InvalidToken("token issued in the future")
        if claims.get("iss") != issuer:
            raise InvalidToken("issuer mismatch")
        self._check_audience(claims.get("aud"))
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise InvalidToken("missing required claim" if subject is None else "invalid claim")

    def _check_audience(self, audience: Any) -> None:
        # RFC 7519 section 4.1.3: a string, or an array of which one must be ours.
        if audience is None:
            raise InvalidToken("missing required claim")
        values = [audience] if isinstance(audience, str) else audience
        if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
            raise InvalidToken("invalid claim")
        if self._audiences.isdisjoint(values):
            raise InvalidToken("audience mismatch")


def _numeric_claim(claims: dict[str, Any], name: str, *, required: bool = False) -> float | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise InvalidToken("missing required claim")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidToken("invalid claim")
    return value


def _b64decode(segment: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise InvalidToken("malformed token") from None


def _decode_json(segment: str) -> dict[str, Any]:
    try:
        value = json.loads(_b64decode(segment))
    except (ValueError, RecursionError):  # also UnicodeDecodeError; RecursionError: deep nesting
        raise InvalidToken("malformed token") from None
    if not isinstance(value, dict):
        raise InvalidToken("malformed token")
    return value
