"""Finding an issuer's JWKS URI: OpenID Connect discovery, then RFC 8414 metadata."""

from urllib.parse import urlsplit

import httpx

from .fetch import FetchError, fetch_json
from .urls import is_fetchable


def metadata_urls(issuer: str) -> list[str]:
    """OpenID Connect Discovery 1.0 section 4 appends the well-known path to the issuer; RFC 8414
    section 3.1 inserts it between the host and the issuer's path."""
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")
    origin = f"{parts.scheme}://{parts.netloc}"
    return [
        f"{origin}{path}/.well-known/openid-configuration",
        f"{origin}/.well-known/oauth-authorization-server{path}",
    ]


def default_jwks_uri(issuer: str) -> str:
    return f"{issuer.rstrip('/')}/.well-known/jwks.json"


async def discover_jwks_uri(client: httpx.AsyncClient, issuer: str, *, max_bytes: int) -> str:
    """The `jwks_uri` of the issuer's metadata, whose `issuer` must be exactly ours.

    Raises:
        FetchError: no metadata document could be read, or none names a usable JWKS URI.
    """
    problems = []
    for url in metadata_urls(issuer):
        try:
            document, _ = await fetch_json(client, url, max_bytes=max_bytes)
        except FetchError as exc:
            problems.append(str(exc))
            continue
        # OpenID Connect Discovery section 4.3 and RFC 8414 section 3.3: the metadata must be about
        # this very issuer, or it could steer us to another issuer's keys.
        if document.get("issuer") != issuer:
            problems.append(f"{url} describes issuer {document.get('issuer')!r}, not {issuer!r}")
            continue
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not is_fetchable(jwks_uri):
            problems.append(f"{url} names no usable jwks_uri ({jwks_uri!r})")
            continue
        return jwks_uri
    raise FetchError("; ".join(problems))
