"""Request bodies in, JSON out: the small pieces of HTTP that every route shares."""

from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.requests import Request
from starlette.responses import Response

from .errors import MalformedBody, PayloadTooLarge, UnsupportedMediaType, ValidationFailed

_FORM = "application/x-www-form-urlencoded"


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def documents_response(
    documents: Sequence[bytes], *, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A JSON array of already-rendered JSON documents (UTF-8), joined without parsing them again.

    The brackets go onto the first and last documents, so that the page is copied once, not
    three times (`b"[" + join + b"]"`)."""
    if not documents:
        body = b"[]"
    else:
        parts = list(documents)
        parts[0] = b"[" + parts[0]
        parts[-1] = parts[-1] + b"]"
        body = b",".join(parts)
    return Response(body, status_code, headers, media_type="application/json")


def document_response(
    document: str, *, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(document.encode(), status_code, headers, media_type="application/json")


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The whole body, refused with 413 as soon as it is known to exceed `max_bytes`."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"at most {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:  # the ASGI messages themselves: Starlette's stream() adds a generator a request
        message = await request.receive()
        if message["type"] != "http.request":
            # The connection ended before the body did (a phone losing its network, a refused
            # trailer): nothing was read whole, nothing is done, and nobody is left to answer.
            raise MalformedBody("the request body ended early")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"at most {max_bytes} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def read_payload(request: Request, max_bytes: int) -> Any:
    """The body as JSON or form fields; None when there is no body at all.

    Raises:
        PayloadTooLarge, UnsupportedMediaType, MalformedBody, ValidationFailed.
    """
    body = await read_body(request, max_bytes)
    if not body.strip():
        return None
    media_type, _, parameters = request.headers.get("content-type", "").partition(";")
    media_type = media_type.strip().lower()
    _check_charset(parameters)
    if media_type == "application/json" or media_type.endswith("+json"):
        return _parse_json(body)
    if media_type == _FORM:
        return _parse_form(body)
    raise UnsupportedMediaType(f"not {media_type or 'an unlabelled body'}")


def _check_charset(parameters: str) -> None:
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in (
            "utf-8",
            "utf8",
        ):
            raise UnsupportedMediaType("only UTF-8 bodies are accepted")


def _parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise MalformedBody("the body is not valid JSON") from None


def _parse_form(body: bytes) -> dict[str, str]:
    try:
        # errors="strict": percent-encoded bytes that are not UTF-8 are refused, not replaced.
        pairs = parse_qsl(
            body.decode("utf-8"), keep_blank_values=True, strict_parsing=True, errors="strict"
        )
    except (UnicodeDecodeError, ValueError):
        raise MalformedBody("the body is not valid form data") from None
    fields: dict[str, str] = {}
    for name, value in pairs:
        if name in fields:
            raise ValidationFailed.field(name, f"{name} is given more than once")
        fields[name] = value
    return fields
