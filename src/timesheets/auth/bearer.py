"""Reading the bearer token out of an Authorization header value (RFC 6750 section 2.1)."""

from .errors import MissingToken


def bearer_token(authorization: str | None) -> str:
    """The token of a `Bearer` credential; the scheme name is case-insensitive (RFC 9110 11.1).

    Raises:
        MissingToken: no Authorization header, another scheme, or an empty credential.
    """
    if not authorization:
        raise MissingToken()
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise MissingToken()
    return token
