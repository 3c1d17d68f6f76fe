"""An async cache of one issuer's signing keys (JWKS), safe against floods of unknown key ids.

- Keys are fetched with a non-blocking client: timeouts, a size cap, no redirects.
- A refresh happens when the keys are older than their lifetime, or when a token names a key id that
  is not cached; one refresh at a time is in flight, and all waiters share its outcome.
- Refreshes are rate-limited (jwks-rsa's budget: 5 a minute), so made-up key ids can neither hammer
  the key server nor delay tokens signed with keys already known: those never wait on the network.
- A failed refresh never discards keys that were fetched before.
"""

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

from .config import IssuerConfig
from .errors import InvalidToken, KeySourceUnavailable

logger = logging.getLogger("timesheets.auth.jwks")

# RFC 7518 section 6.1: which key type each JWS algorithm family needs.
_KEY_TYPES = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}


class KeyFetchError(Exception):
    """The key server did not answer with a usable key set; the text is for logs only."""


@dataclass(frozen=True, slots=True)
class KeySourceState:
    """What /readyz reports about one issuer's keys."""

    issuer: str
    key_count: int
    age_seconds: float | None
    fetches: int
    last_error: str | None


class JwksCache:
    def __init__(
        self,
        issuer: IssuerConfig,
        client: httpx.AsyncClient,
        *,
        ttl_seconds: float = 600.0,
        refreshes_per_minute: int = 5,
        max_bytes: int = 256 * 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.issuer = issuer
        self._client = client
        self._ttl = ttl_seconds
        self._budget = refreshes_per_minute
        self._max_bytes = max_bytes
        self._clock = clock
        self._keys: dict[str | None, _Key] = {}
        self._fetched_at: float | None = None
        self._recent: deque[float] = deque()
        self._inflight: asyncio.Future[None] | None = None
        self.fetches = 0
        self.generation = 0  # moves on with every key set stored; see TokenVerifier's memo
        self.last_error: str | None = None

    def state(self) -> KeySourceState:
        age = None if self._fetched_at is None else self._clock() - self._fetched_at
        return KeySourceState(
            self.issuer.issuer, len(self._keys), age, self.fetches, self.last_error
        )

    async def get_key(self, kid: str | None, alg: str) -> Any:
        """The verification key that `kid` names, usable with `alg`.

        Raises:
            InvalidToken: no such key (after at most one rate-limited refresh), or it does not fit `alg`.
            KeySourceUnavailable: the key server cannot be reached and no cached key can decide.
        """
        if self.is_expired():
            await self._refresh_or_keep_stale()
        jwk = self._lookup(kid)
        if jwk is None and self._may_refresh():
            await self._refresh_for_unknown_kid()
            jwk = self._lookup(kid)
        if jwk is None:
            raise InvalidToken("unknown key id" if kid is not None else "key id required")
        return jwk.usable_with(alg)

    def _lookup(self, kid: str | None) -> "_Key | None":
        if kid is None and len(self._keys) > 1:
            raise InvalidToken("key id required")
        if kid is None:
            return next(iter(self._keys.values()), None)
        return self._keys.get(kid)

    def is_expired(self) -> bool:
        """Whether the keys are due for a refresh (or were never fetched)."""
        return self._fetched_at is None or self._clock() - self._fetched_at >= self._ttl

    def _may_refresh(self) -> bool:
        if self._inflight is not None:
            return True
        now = self._clock()
        while self._recent and now - self._recent[0] >= 60.0:
            self._recent.popleft()
        return len(self._recent) < self._budget

    async def _refresh_or_keep_stale(self) -> None:
        if not self._may_refresh():
            if not self._keys:
                raise KeySourceUnavailable()
            return
        try:
            await self._refresh()
        except KeyFetchError:
            if not self._keys:
                raise KeySourceUnavailable() from None

    async def _refresh_for_unknown_kid(self) -> None:
        try:
            await self._refresh()
        except KeyFetchError:
            # The key may be a new one that the key server would have listed: nothing can decide.
            raise KeySourceUnavailable() from None

    async def _refresh(self) -> None:
        """Fetch the key set; concurrent callers share one fetch and its outcome."""
        if self._inflight is None:
            self._recent.append(self._clock())
            self._inflight = asyncio.ensure_future(self._fetch_and_store())
            self._inflight.add_done_callback(self._clear_inflight)
        await asyncio.shield(self._inflight)

    def _clear_inflight(self, future: "asyncio.Future[None]") -> None:
        self._inflight = None
        if not future.cancelled():
            future.exception()  # mark retrieved: every waiter has seen it already

    async def _fetch_and_store(self) -> None:
        self.fetches += 1
        try:
            keys = _parse_jwks(await self._download())
        except KeyFetchError as exc:
            self.last_error = str(exc)
            logger.warning("key fetch failed for %s: %s", self.issuer.jwks_uri, exc)
            raise
        self._keys = keys
        self._fetched_at = self._clock()
        self.generation += 1
        self.last_error = None

    async def _download(self) -> bytes:
        try:
            async with self._client.stream(
                "GET",
                self.issuer.jwks_uri,
                # identity: the size cap then bounds what is held in memory, not a gzip bomb.
                headers={"Accept": "application/json", "Accept-Encoding": "identity"},
                follow_redirects=False,  # whatever the injected client does
            ) as response:
                if response.status_code != 200:
                    raise KeyFetchError(f"key server answered {response.status_code}")
                if response.headers.get("content-encoding", "identity") != "identity":
                    raise KeyFetchError("key server sent a compressed key set")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > self._max_bytes:
                        raise KeyFetchError(f"key set larger than {self._max_bytes} bytes")
                return bytes(body)
        except httpx.HTTPError as exc:
            raise KeyFetchError(f"{type(exc).__name__}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class _Key:
    kty: str
    alg: str | None
    key: Any

    def usable_with(self, alg: str) -> Any:
        # RFC 8725 section 3.1: the algorithm must fit the key, whatever the token claims.
        if (self.alg is not None and self.alg != alg) or self.kty != _KEY_TYPES.get(alg[:2]):
            raise InvalidToken("algorithm not allowed")
        return self.key


def _parse_jwks(body: bytes) -> dict[str | None, _Key]:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        raise KeyFetchError("key set is not JSON") from exc
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise KeyFetchError("key set has no 'keys' array")
    keys: dict[str | None, _Key] = {}
    for entry in document["keys"]:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK(entry).key
            keys[entry.get("kid")] = _Key(str(entry.get("kty")), entry.get("alg"), key)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError):
            logger.info("skipping an unusable key (kid %r)", entry.get("kid"))
    if not keys:
        raise KeyFetchError("key set holds no usable signing key")
    return keys
