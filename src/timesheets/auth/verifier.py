"""Turns a bearer token into a Principal, or says exactly which rule it broke.

The checks run cheapest first, and everything that needs no key runs before any key is looked up, so
that a token which could not be valid never causes a request to the key server.
"""

import base64
import binascii
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

from .claims import (
    check_access_token_profile,
    check_audience,
    check_issuer,
    check_subject,
    check_times,
)
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

_AUDIENCE_HINT = (
    "not a signed JWT: Auth0 issues opaque or encrypted tokens when the client requests no "
    "audience; request the token with this API's identifier as audience"
)
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
    def for_config(
        cls,
        config: AuthConfig,
        client: httpx.AsyncClient,
        *,
        observer: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> "TokenVerifier":
        """A verifier with one key cache per configured issuer, all fetching through `client`;
        `observer` is told of every key fetch."""
        caches = {
            entry.issuer: JwksCache(entry, client, config.keys, observer=observer)
            for entry in config.issuers
        }
        return cls(config, caches)

    def start(self) -> None:
        """Fetch every issuer's keys now, and keep them fresh in the background."""
        for cache in self._caches.values():
            cache.start()

    async def close(self) -> None:
        for cache in self._caches.values():
            await cache.close()

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
            # Issuer, audience and subject were checked when it was verified, and cannot change;
            # time can: exp (nbf and iat held then, and later only more so).
            check_times(remembered.claims, now=self._clock(), leeway=self.config.leeway_seconds)
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
        if self.config.require_at_jwt:
            check_access_token_profile(header, claims)
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
            raise InvalidToken("token too large", reason="too_large", length=len(token))

    @staticmethod
    def _split(token: str) -> list[str]:
        segments = token.split(".")
        if len(segments) == 5:  # RFC 7516 compact JWE: an encrypted token, not a signed one
            raise InvalidToken(
                "encrypted tokens are not accepted", reason="encrypted", hint=_AUDIENCE_HINT
            )
        if len(segments) == 1 and _SEGMENT.fullmatch(token):
            raise InvalidToken("malformed token", reason="opaque", hint=_AUDIENCE_HINT)
        if len(segments) != 3 or not all(_SEGMENT.fullmatch(segment) for segment in segments):
            raise InvalidToken("malformed token", reason="malformed", segments=len(segments))
        return segments

    def _check_header(self, header: dict[str, Any]) -> str:
        alg = header.get("alg")
        # RFC 8725 section 3.1: only the configured asymmetric algorithms, compared exactly, so
        # "none" in any casing and HMAC with a public key as its secret never reach a key.
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise InvalidToken(
                "algorithm not allowed",
                reason="disallowed_algorithm",
                received=str(alg)[:20],
                allowed=list(self._algorithms),
            )
        references = [name for name in _KEY_REFERENCE_HEADERS if name in header]
        if references:
            raise InvalidToken(
                "key reference in token header not allowed",
                reason="key_reference",
                headers=references,
            )
        # RFC 7515 section 4.1.11: we understand no extension, so any critical one is a rejection.
        if "crit" in header:
            raise InvalidToken("unsupported critical header", reason="critical_header")
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.lower() not in _ACCEPTED_TYPES):
            raise InvalidToken("unsupported token type", reason="token_type", typ=str(typ)[:40])
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise InvalidToken("malformed token", reason="malformed", field="kid")
        return alg

    def _cache_for(self, claims: dict[str, Any]) -> JwksCache:
        # The unverified `iss` only picks which issuer's keys to try: a token naming an issuer we
        # do not trust is refused before any network request (the signature still decides).
        issuer = claims.get("iss")
        check_issuer(issuer, self._caches.keys())
        return self._caches[str(issuer)]

    def _check_signature(self, segments: list[str], key: Any, alg: str) -> None:
        signing_input = f"{segments[0]}.{segments[1]}".encode("ascii")
        signature = _b64decode(segments[2])
        try:
            valid = self._algorithms[alg].verify(signing_input, key, signature)
        except (ValueError, TypeError, jwt.PyJWTError):
            valid = False
        if not valid:
            raise InvalidToken("invalid signature", reason="bad_signature")

    def _check_claims(self, claims: dict[str, Any], issuer: str) -> None:
        """RFC 7519 section 4.1, with one leeway for clock skew on exp, nbf and iat."""
        check_times(claims, now=self._clock(), leeway=self.config.leeway_seconds)
        check_issuer(claims.get("iss"), (issuer,))
        check_audience(claims, self._audiences)
        check_subject(claims)


def _b64decode(segment: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise InvalidToken("malformed token", reason="malformed", field="base64") from None


def _decode_json(segment: str) -> dict[str, Any]:
    try:
        value = json.loads(_b64decode(segment))
    except (ValueError, RecursionError):  # also UnicodeDecodeError; RecursionError: deep nesting
        raise InvalidToken("malformed token", reason="malformed", field="json") from None
    if not isinstance(value, dict):
        raise InvalidToken("malformed token", reason="malformed", field="json")
    return value
