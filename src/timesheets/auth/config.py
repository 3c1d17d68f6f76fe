"""What the token check needs to know; built by the application, never read from the environment."""

from dataclasses import dataclass

DEFAULT_ALGORITHMS = ("RS256",)
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


@dataclass(frozen=True, slots=True)
class IssuerConfig:
    """One trusted issuer: its exact `iss` string and where its signing keys are published."""

    issuer: str
    jwks_uri: str


@dataclass(frozen=True, slots=True)
class AuthConfig:
    issuers: tuple[IssuerConfig, ...]
    audiences: tuple[str, ...]
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    email_claim: str = "https://api.exampleco.com/email"
    leeway_seconds: int = 30
    max_token_bytes: int = 16 * 1024
    jwks_ttl_seconds: float = 600.0
    jwks_refreshes_per_minute: int = 5
    jwks_timeout_seconds: float = 3.0
    jwks_max_bytes: int = 256 * 1024
    realm: str = "timesheets"

    def __post_init__(self) -> None:
        if not self.issuers:
            raise ValueError("at least one issuer is required")
        if not self.audiences:
            raise ValueError("at least one audience is required")
        bad = [alg for alg in self.algorithms if alg not in ASYMMETRIC_ALGORITHMS]
        if bad:
            raise ValueError(f"only asymmetric algorithms may be allowed, not {', '.join(bad)}")
