"""Access-token verification for OAuth2 resource servers, independent of any web framework.

It imports nothing from the rest of the service: configure it with an AuthConfig, give it an
httpx.AsyncClient for the key server, and call TokenVerifier.verify().
"""

from .bearer import bearer_token
from .config import DEFAULT_ALGORITHMS, AuthConfig, IssuerConfig
from .dev_issuer import DevIssuer, SigningKey
from .errors import (
    AuthError,
    InsufficientScope,
    InvalidToken,
    KeySourceUnavailable,
    MissingToken,
)
from .jwks import JwksCache, KeySourceState
from .principal import Principal, scopes_from_claims
from .verifier import TokenVerifier

__all__ = [
    "DEFAULT_ALGORITHMS",
    "AuthConfig",
    "AuthError",
    "DevIssuer",
    "InsufficientScope",
    "InvalidToken",
    "IssuerConfig",
    "JwksCache",
    "KeySourceState",
    "KeySourceUnavailable",
    "MissingToken",
    "Principal",
    "SigningKey",
    "TokenVerifier",
    "bearer_token",
    "scopes_from_claims",
]
