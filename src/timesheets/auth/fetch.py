"""Fetching a small JSON document from a key server: timeouts, a size cap, no redirects."""

import json
from typing import Any

import httpx


class FetchError(Exception):
    """The server did not answer with a usable document; the text is for logs only."""


async def fetch_json(
    client: httpx.AsyncClient, url: str, *, max_bytes: int
) -> tuple[dict[str, Any], httpx.Headers]:
    """The JSON object at `url` and the response headers.

    Raises:
        FetchError: network failure, a status other than 200, a redirect, a body over `max_bytes`,
            a compressed body, or anything but a JSON object.
    """
    try:
        async with client.stream(
            "GET",
            url,
            # identity: the size cap then bounds what is held in memory, not a gzip bomb.
            headers={"Accept": "application/json", "Accept-Encoding": "identity"},
            follow_redirects=False,  # whatever the injected client does
        ) as response:
            if response.status_code != 200:
                raise FetchError(f"{url} answered {response.status_code}")
            if response.headers.get("content-encoding", "identity") != "identity":
                raise FetchError(f"{url} sent a compressed body")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise FetchError(f"{url} sent more than {max_bytes} bytes")
            headers = response.headers
    except httpx.HTTPError as exc:
        raise FetchError(f"{url}: {type(exc).__name__}: {exc}") from exc
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        raise FetchError(f"{url} did not send JSON") from exc
    if not isinstance(document, dict):
        raise FetchError(f"{url} did not send a JSON object")
    return document, headers
