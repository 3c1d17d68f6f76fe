"""What the token check needs to know; built by the application, never read from the environment."""

from dataclasses import dataclass, field

DEFAULT_ALGORITHMS = ("RS256",)
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


@dataclass(frozen=True, slots=True)
class IssuerConfig:
    """One trusted issuer: its exact `iss` string, and where its signing keys are published
    (None: found by OpenID Connect discovery, then RFC 8414 metadata, else `{issuer}.well-known/
    jwks.json`)."""

    issuer: str
    jwks_uri: str | None = None


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """How one issuer's key set is kept (all durations in seconds)."""

    default_ttl: float = 600.0  # when the key server sends no Cache-Control max-age or Expires
    min_ttl: float = 60.0  # floor and ceiling for what the key server asks for
    max_ttl: float = 86_400.0
    max_stale: float = 86_400.0  # how long the last good key set serves while refreshes fail
    refreshes_per_minute: int = 5  # jwks-rsa's budget
    cooldown: float = 5.0  # at least this long between two fetches
    max_bytes: int = 256 * 1024
    absent_kids: int = 1024  # how many key ids known to be absent are remembered
    timeout: float = 3.0

    def __post_init__(self) -> None:
        if not 0 < self.min_ttl <= self.default_ttl <= self.max_ttl:
            raise ValueError("key-set lifetimes must satisfy 0 < min <= default <= max")
        if self.max_stale < 0 or self.cooldown < 0 or self.refreshes_per_minute < 1:
            raise ValueError("max_stale and cooldown must be >= 0, refreshes_per_minute >= 1")


@dataclass(frozen=True, slots=True)
class AuthConfig:
    issuers: tuple[IssuerConfig, ...]
    audiences: tuple[str, ...]
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    email_claim: str = "https://api.exampleco.com/email"
    leeway_seconds: int = 30
    max_token_bytes: int = 16 * 1024
    require_at_jwt: bool = False  # RFC 9068 strictly: typ at+jwt, client_id, jti and iat required
    keys: CachePolicy = field(default_factory=CachePolicy)
    realm: str = "timesheets"

    def __post_init__(self) -> None:
        if not self.issuers:
            raise ValueError("at least one issuer is required")
        if not self.audiences:
            raise ValueError("at least one audience is required")
        bad = [alg for alg in self.algorithms if alg not in ASYMMETRIC_ALGORITHMS]
        if bad:
            raise ValueError(f"only asymmetric algorithms may be allowed, not {', '.join(bad)}")
