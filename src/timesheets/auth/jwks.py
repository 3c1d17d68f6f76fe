"""An async cache of one issuer's signing keys (JWKS) that serves through key-server outages and
cannot be flooded by made-up key ids.

- The key set's lifetime follows the key server's Cache-Control max-age or Expires, clamped to the
  policy's floor and ceiling. A background task refreshes it before it expires (with jitter), so no
  request waits on a routine refresh; a request that finds the keys past their lifetime starts a
  refresh and goes on with the keys it has.
- A failed refresh never discards good keys: the last good set serves for `max_stale` seconds after
  it was fetched. Past that, and with no key set at all, requests wait for a fetch, and get
  KeySourceUnavailable (503) if it fails: never a 401 for a token that may well be valid.
- An unknown key id causes at most one refresh, shared by every request waiting on it, and only if
  the budget (refreshes per minute), the cooldown between fetches and the memory of key ids known to
  be absent allow it. Tokens with known keys never wait on the network.
- A successful refresh replaces the key set: a key the issuer removed stops being accepted.
"""

import asyncio
import email.utils
import logging
import random
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

from .config import CachePolicy, IssuerConfig
from .discovery import default_jwks_uri, discover_jwks_uri
from .errors import InvalidToken, KeySourceUnavailable
from .fetch import FetchError, fetch_json

logger = logging.getLogger("timesheets.auth.jwks")

# RFC 7518 section 6.1: which key type each JWS algorithm family needs.
_KEY_TYPES = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
_RETRY_AFTER_FAILURE = (5.0, 60.0)  # background retries: first delay, then doubling up to this
_MIN_DELAY = 0.05  # the background task never spins, whatever the lifetime


@dataclass(frozen=True, slots=True)
class KeySourceState:
    """What /readyz reports about one issuer's keys."""

    issuer: str
    jwks_uri: str | None
    key_count: int
    age_seconds: float | None
    fresh: bool  # within the lifetime the key server asked for
    usable: bool  # fresh, or stale but within max_stale
    fetches: int
    last_error: str | None


@dataclass(frozen=True, slots=True)
class _Key:
    kty: str
    alg: str | None
    key: Any

    def usable_with(self, alg: str) -> Any:
        # RFC 8725 section 3.1: the algorithm must fit the key, whatever the token claims.
        if (self.alg is not None and self.alg != alg) or self.kty != _KEY_TYPES.get(alg[:2]):
            raise InvalidToken("algorithm not allowed", reason="key_algorithm_mismatch", alg=alg)
        return self.key


class JwksCache:
    def __init__(
        self,
        issuer: IssuerConfig,
        client: httpx.AsyncClient,
        policy: CachePolicy | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        observer: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.issuer = issuer
        self._client = client
        self.policy = policy or CachePolicy()
        self._clock = clock
        self._observer = observer  # told of every fetch, e.g. for metrics
        self._jwks_uri = issuer.jwks_uri
        self._keys: dict[str | None, _Key] = {}
        self._fetched_at: float | None = None
        self._expires_at = 0.0
        self._due_at = 0.0  # when the background refresh is due, jittered once per key set
        self._recent: deque[float] = deque()  # start times of the fetches of the last minute
        self._absent: OrderedDict[str, int] = OrderedDict()  # kid -> generation it was absent in
        self._inflight: asyncio.Future[None] | None = None
        self._scheduler: asyncio.Task[None] | None = None
        self.fetches = 0
        self.generation = 0  # moves on with every key set stored; see TokenVerifier's memo
        self.last_error: str | None = None

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Fetch the keys now and keep them fresh in the background (a failure is only logged)."""
        if self._scheduler is None:
            self._scheduler = asyncio.ensure_future(self._keep_fresh())

    async def close(self) -> None:
        if self._scheduler is not None:
            self._scheduler.cancel()
            await asyncio.gather(self._scheduler, return_exceptions=True)
            self._scheduler = None

    async def _keep_fresh(self) -> None:
        failures = 0
        while True:
            try:
                if self._due_in() <= 0:
                    await self._refresh()
                failures = 0
                delay = max(self._due_in(), _MIN_DELAY)
            except FetchError:
                failures += 1
                first, ceiling = _RETRY_AFTER_FAILURE
                delay = max(min(first * 2 ** (failures - 1), ceiling), self.policy.cooldown)
            await asyncio.sleep(delay)

    def _due_in(self) -> float:
        """Seconds until the background refresh is due: before expiry, jittered so that several
        workers do not all ask at once (the jitter is drawn once per key set, so that waking up
        early never pushes the refresh past the expiry)."""
        if self._fetched_at is None:
            return 0.0
        return self._due_at - self._clock()

    # --- state -----------------------------------------------------------------------------------

    def state(self) -> KeySourceState:
        now = self._clock()
        age = None if self._fetched_at is None else now - self._fetched_at
        return KeySourceState(
            issuer=self.issuer.issuer,
            jwks_uri=self._jwks_uri,
            key_count=len(self._keys),
            age_seconds=age,
            fresh=bool(self._keys) and now < self._expires_at,
            usable=self._usable(now),
            fetches=self.fetches,
            last_error=self.last_error,
        )

    def is_expired(self) -> bool:
        """Whether the keys have outlived the lifetime the key server gave them (or never came)."""
        return self._clock() >= self._expires_at

    def _usable(self, now: float) -> bool:
        # Keys within their lifetime always serve; max_stale bounds only how long stale ones do.
        if self._fetched_at is None:
            return False
        return now < self._expires_at or now - self._fetched_at <= self.policy.max_stale

    # --- lookups ---------------------------------------------------------------------------------

    async def get_key(self, kid: str | None, alg: str) -> Any:
        """The verification key that `kid` names, usable with `alg`.

        Raises:
            InvalidToken: no such key (after at most one allowed refresh), or it does not fit `alg`.
            KeySourceUnavailable: the key server cannot be reached and no cached key can decide.
        """
        now = self._clock()
        if not self._usable(now):
            await self._refresh_or_unavailable()
        elif now >= self._expires_at:
            self._refresh_in_background()
        key = self._lookup(kid)
        refreshed = False
        if key is None and kid is not None and self._may_refresh_for(kid):
            await self._refresh_or_unavailable()
            key, refreshed = self._lookup(kid), True
        if key is None:
            if refreshed and kid is not None:
                self._remember_absent(kid)
            raise InvalidToken(
                "unknown key id", reason="unknown_kid", kid=kid, after_refresh=refreshed
            )
        return key.usable_with(alg)

    def _lookup(self, kid: str | None) -> _Key | None:
        if kid is None and len(self._keys) > 1:
            raise InvalidToken("key id required", reason="missing_kid", keys=len(self._keys))
        if kid is None:
            return next(iter(self._keys.values()), None)
        return self._keys.get(kid)

    def _remember_absent(self, kid: str) -> None:
        self._absent[kid] = self.generation
        self._absent.move_to_end(kid)
        while len(self._absent) > self.policy.absent_kids:
            self._absent.popitem(last=False)

    def _may_refresh_for(self, kid: str) -> bool:
        # A key id that the current key set was already searched for would not appear by asking
        # again: only a new key set (the routine refresh) can bring it.
        if self._absent.get(kid) == self.generation:
            return False
        return self._may_fetch()

    def _may_fetch(self) -> bool:
        if self._inflight is not None:
            return True  # joining a fetch costs nothing
        now = self._clock()
        while self._recent and now - self._recent[0] >= 60.0:
            self._recent.popleft()
        if self._recent and now - self._recent[-1] < self.policy.cooldown:
            return False
        return len(self._recent) < self.policy.refreshes_per_minute

    # --- fetching --------------------------------------------------------------------------------

    async def _refresh_or_unavailable(self) -> None:
        if not self._may_fetch():
            if self._usable(self._clock()):
                return
            raise KeySourceUnavailable()
        try:
            await self._refresh()
        except FetchError:
            # The token may be signed by a key the key server would have listed: nothing can decide.
            raise KeySourceUnavailable() from None

    def _refresh_in_background(self) -> None:
        if self._inflight is None and self._may_fetch():
            self._start_fetch()

    async def _refresh(self) -> None:
        """Fetch the key set; concurrent callers share one fetch and its outcome."""
        future = self._inflight or self._start_fetch()
        await asyncio.shield(future)

    def _start_fetch(self) -> "asyncio.Future[None]":
        self._recent.append(self._clock())
        self._inflight = asyncio.ensure_future(self._fetch_and_store())
        self._inflight.add_done_callback(self._clear_inflight)
        return self._inflight

    def _clear_inflight(self, future: "asyncio.Future[None]") -> None:
        self._inflight = None
        if not future.cancelled():
            future.exception()  # mark retrieved: every waiter has seen it already

    async def _fetch_and_store(self) -> None:
        self.fetches += 1
        try:
            document, headers = await fetch_json(
                self._client, await self._resolve_jwks_uri(), max_bytes=self.policy.max_bytes
            )
            keys = _parse_jwks(document)
        except FetchError as exc:
            self.last_error = str(exc)
            self._observe("key_fetch", outcome="error")
            logger.warning(
                "key fetch failed",
                extra={
                    "event": "key_fetch",
                    "outcome": "error",
                    "issuer": self.issuer.issuer,
                    "error": str(exc),
                },
            )
            raise
        now = self._clock()
        self._keys = keys
        self._fetched_at = now
        lifetime = self._lifetime(headers)
        self._expires_at = now + lifetime
        self._due_at = now + lifetime * random.uniform(0.75, 0.9)
        self.generation += 1
        self.last_error = None
        self._observe("key_fetch", outcome="ok")
        logger.info(
            "keys fetched",
            extra={
                "event": "key_fetch",
                "outcome": "ok",
                "issuer": self.issuer.issuer,
                "keys": len(keys),
                "lifetime": round(self._expires_at - now, 1),
            },
        )

    def _observe(self, event: str, **fields: Any) -> None:
        if self._observer is not None:
            self._observer(event, {"issuer": self.issuer.issuer, **fields})

    async def _resolve_jwks_uri(self) -> str:
        if self._jwks_uri is not None:
            return self._jwks_uri
        try:
            self._jwks_uri = await discover_jwks_uri(
                self._client, self.issuer.issuer, max_bytes=self.policy.max_bytes
            )
            return self._jwks_uri
        except FetchError as exc:
            # The contract's fallback; discovery is tried again at the next fetch.
            logger.info("issuer metadata unavailable (%s); trying the usual JWKS path", exc)
            return default_jwks_uri(self.issuer.issuer)

    def _lifetime(self, headers: httpx.Headers) -> float:
        policy = self.policy
        asked = _max_age(headers)
        if asked is None:
            return policy.default_ttl
        return min(max(asked, policy.min_ttl), policy.max_ttl)


def _max_age(headers: httpx.Headers) -> float | None:
    """RFC 9111 section 4.2.1: max-age wins over Expires; no-store and no-cache mean no lifetime."""
    directives = [part.strip().lower() for part in headers.get("cache-control", "").split(",")]
    for directive in directives:
        if directive in ("no-store", "no-cache"):
            return 0.0
        name, _, value = directive.partition("=")
        value = value.strip('"')
        if name == "max-age" and value.isascii() and value.isdigit():  # not '²', which is a digit
            return float(value)
    expires = headers.get("expires")
    if expires:
        try:
            at = email.utils.parsedate_to_datetime(expires).timestamp()
            date = headers.get("date")
            now = email.utils.parsedate_to_datetime(date).timestamp() if date else time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return 0.0  # RFC 9111 section 5.3: an invalid Expires means already expired
        return max(at - now, 0.0)
    return None


def _parse_jwks(document: dict[str, Any]) -> dict[str | None, _Key]:
    if not isinstance(document.get("keys"), list):
        raise FetchError("key set has no 'keys' array")
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
        raise FetchError("key set holds no usable signing key")
    return keys
