"""Errors of the token check, each able to render its own RFC 6750 challenge.

AuthError
  MissingToken          401, challenge without error= (RFC 6750 section 3.1)
  InvalidToken          401, error="invalid_token", error_description from a fixed vocabulary
  InsufficientScope     403, error="insufficient_scope", scope="..."
  KeySourceUnavailable  503, Retry-After: the key server could not be reached and no cached key decides
"""

from typing import Any, ClassVar

# The only texts that may appear in error_description: RFC 6750 section 3 restricts the characters
# of that attribute, and a library's message could leak details or break the header.
DESCRIPTIONS = frozenset(
    {
        "malformed token",
        "token too large",
        "encrypted tokens are not accepted",
        "algorithm not allowed",
        "key reference in token header not allowed",
        "unsupported critical header",
        "unsupported token type",
        "unknown key id",
        "key id required",
        "invalid signature",
        "token expired",
        "token not yet valid",
        "token issued in the future",
        "missing required claim",
        "issuer mismatch",
        "audience mismatch",
        "invalid claim",
        "unsupported authorization scheme",
        "not an access token",
    }
)


class AuthError(Exception):
    """A failed token check; knows its status and its WWW-Authenticate value."""

    status_code: ClassVar[int] = 401
    error: ClassVar[str | None] = None
    code: ClassVar[str] = "missing_token"  # the stable code of the JSON error body
    message: ClassVar[str] = "Missing or invalid token"

    def __init__(
        self,
        description: str | None = None,
        *,
        realm: str = "timesheets",
        reason: str | None = None,
        **details: Any,
    ) -> None:
        if description is not None and description not in DESCRIPTIONS:
            raise ValueError(f"not in the fixed vocabulary: {description!r}")
        super().__init__(description or self.message)
        self.description = description
        self.realm = realm
        # For logs and metrics only, never for the response: the class of the rejection and what
        # an operator needs to fix it (expected against received, by how many seconds...).
        self.reason = reason or (description or self.code).replace(" ", "_")
        self.details = details

    def challenge_params(self) -> list[tuple[str, str]]:
        params = [("realm", self.realm)]
        if self.error:
            params.append(("error", self.error))
        if self.description:
            params.append(("error_description", self.description))
        return params

    def www_authenticate(self, *, resource_metadata: str | None = None) -> str:
        params = self.challenge_params()
        if resource_metadata:  # RFC 9728 section 5.1
            params.append(("resource_metadata", resource_metadata))
        return "Bearer " + ", ".join(f'{name}="{value}"' for name, value in params)

    def headers(self, *, resource_metadata: str | None = None) -> dict[str, str]:
        return {"WWW-Authenticate": self.www_authenticate(resource_metadata=resource_metadata)}


class MissingToken(AuthError):
    """No credentials were sent: the challenge carries no error code (RFC 6750 section 3.1)."""


class InvalidToken(AuthError):
    error = "invalid_token"
    code = "invalid_token"


class InsufficientScope(AuthError):
    status_code = 403
    error = "insufficient_scope"
    code = "insufficient_scope"
    message = "Forbidden"

    def __init__(self, scope: str, *, realm: str = "timesheets") -> None:
        super().__init__(None, realm=realm, reason="insufficient_scope", required=scope)
        self.scope = scope

    def challenge_params(self) -> list[tuple[str, str]]:
        return [*super().challenge_params(), ("scope", self.scope)]


class KeySourceUnavailable(AuthError):
    """The issuer's keys could not be fetched and no cached key can decide: retry later, never 401."""

    status_code = 503
    code = "temporarily_unavailable"
    message = "The token cannot be checked right now: the issuer's keys are unreachable"
    retry_after: ClassVar[int] = 30

    def headers(self, *, resource_metadata: str | None = None) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}
